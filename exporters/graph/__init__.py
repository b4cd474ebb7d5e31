"""The exported graph: the export-friendly rewrites (rules), the ONNX export and its contract, and what a model's
outputs are and how they are judged. Imports nothing else of exporters."""
