"""Export side of vitdeploy: zoo, rewrites, ONNX export, targets and the pipeline (imports torch).

    import exporters
    report = exporters.export("swin_t", targets=["openvino"], precision="int8")
    report = exporters.export(my_module, input_shape=(3, 224, 224), labels=["cat", "dog"])
"""
from exporters.api import ExportError, Report, export
from exporters.graph.rewrites import apply_rewrites
from exporters.models.zoo import create_model

__all__ = ["export", "Report", "ExportError", "create_model", "apply_rewrites"]
