"""Where a model comes from and what it is: the zoo (names, timm, torchvision, the digits fixtures), saved folders and
checkpoints, weight loading, input sizes, feature maps, memory estimates and FLOPs. Imports nothing else of exporters."""
