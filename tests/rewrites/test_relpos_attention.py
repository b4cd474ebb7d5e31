"""relpos_attention: BEiT's and vision_transformer_relpos' attention with the relative-position bias baked."""
import pytest
import timm

from exporters.graph.rewrites.relpos import StaticBiasAttention
from exporters.models.zoo import build_digits
from tests.rewrites.helpers import lively, max_err

PASS = ["relpos_attention"]
TINY = dict(num_classes=0, img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3)


@pytest.mark.parametrize("arch, kw", [
    ("beit_base_patch16_224", {}),
    ("vit_relpos_small_patch16_224", {}),  # RelPosMlp
    ("vit_relpos_small_patch16_224", {"rel_pos_type": "bias"}),  # RelPosBias
    ("vit_relpos_base_patch16_clsgap_224", {}),  # a class token: the bias covers it
    ("vit_relpos_small_patch16_224", {"qk_norm": True}),  # q/k norms: the scale stays after them
])
def test_bias_is_baked_and_equivalent(arch, kw):
    model = lively(timm.create_model(arch, **{**TINY, **kw}))
    err, report, rewritten = max_err(model, (3, 32, 32), PASS)
    assert err <= 1e-5 and report.replaced["relpos_attention"] == 2
    attn = [m for m in rewritten.modules() if isinstance(m, StaticBiasAttention)]
    assert len(attn) == 2 and all(a.bias is not None and a.bias.shape[1] == 3 for a in attn)


def test_beit_exports_to_onnx_once_rewritten(tmp_path):
    from exporters.graph.onnx import export_onnx
    model = lively(timm.create_model("beit_base_patch16_224", **TINY))
    with pytest.raises(Exception, match="ONNX export failed"):  # upstream's SDPA-with-mask decomposition
        export_onnx(model, (1, 3, 32, 32), tmp_path / "naive.onnx", enforce_contract=False)
    _, _, rewritten = max_err(model, (3, 32, 32), PASS, batches=(1,))
    exp = export_onnx(rewritten, (1, 3, 32, 32), tmp_path / "ours.onnx")
    assert exp.contract["passed"] and "Gather" not in exp.op_counts


def test_plain_vit_and_swin_are_not_matched():
    for name in ("digits_vit", "digits_swin"):
        _, report, _ = max_err(build_digits(name).eval(), (3, 32, 32), PASS, batches=(1,))
        assert report.replaced["relpos_attention"] == 0
