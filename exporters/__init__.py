"""Export side of vitdeploy: zoo, rewrites, ONNX export and targets (imports torch)."""
from exporters.zoo import ModelSpec, create_model

__all__ = ["ModelSpec", "create_model", "apply_rewrites"]


def __getattr__(name):
    if name == "apply_rewrites":
        from exporters.rewrites import apply_rewrites
        return apply_rewrites
    raise AttributeError(name)
