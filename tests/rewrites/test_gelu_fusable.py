"""gelu_fusable: exact GELU in the operator order ONNX Runtime's GeluFusion matches."""
import onnxruntime as ort
import torch
from torch import nn

from exporters.graph.rewrites.common import FusableGELU
from exporters.models.zoo import build_digits
from tests.rewrites.helpers import max_err

PASS = ["gelu_fusable"]


def test_digits_models_equivalent_and_counted():
    for name, n in (("digits_vit", 4), ("digits_swin", 4)):
        err, report, _ = max_err(build_digits(name).eval(), (3, 32, 32), PASS)
        assert err <= 1e-5 and report.replaced["gelu_fusable"] == n


def test_tanh_gelu_is_left_alone():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8), nn.GELU(approximate="tanh")).eval()
    err, report, _ = max_err(model, (3, 8, 8), PASS)
    assert report.replaced["gelu_fusable"] == 0 and err == 0.0


def test_onnx_runtime_fuses_it(tmp_path):
    mod = nn.Sequential(nn.Linear(16, 16), FusableGELU()).eval()
    path = tmp_path / "g.onnx"
    torch.onnx.export(mod, (torch.randn(2, 16),), str(path), dynamo=True, opset_version=18)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    import onnx
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "Gelu" in ops and "Erf" not in ops


def test_timm_gelu_of_swinv2_is_fused_too():
    import timm

    from tests.rewrites.helpers import lively
    model = lively(timm.create_model("swinv2_tiny_window8_256", num_classes=0, img_size=32, patch_size=2, window_size=4,
                                     embed_dim=24, depths=(2, 2), num_heads=(1, 2)))
    err, report, _ = max_err(model, (3, 32, 32), PASS)
    assert err <= 1e-5 and report.replaced["gelu_fusable"] == 4
