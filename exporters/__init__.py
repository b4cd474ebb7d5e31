"""Export side of vitdeploy: zoo, rewrites, ONNX export, targets and the pipeline (imports torch).

    import exporters
    report = exporters.export("swin_t", targets=["openvino"], precision="int8")
    report = exporters.export(my_module, input_shape=(3, 224, 224), labels=["cat", "dog"])
"""
from exporters.api import ExportError, Report, export

__all__ = ["export", "Report", "ExportError", "create_model", "apply_rewrites"]


def __getattr__(name):
    if name == "apply_rewrites":
        from exporters.graph.rewrites import apply_rewrites
        return apply_rewrites
    if name == "create_model":
        from exporters.models.zoo import create_model
        return create_model
    raise AttributeError(name)
