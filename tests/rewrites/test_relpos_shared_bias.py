"""relpos_shared_bias: a relative-position bias shared by every block, computed once into a constant module."""
import pytest
import timm

from exporters.graph.rewrites.relpos import ConstantBias
from tests.rewrites.helpers import lively, max_err

PASS = ["relpos_shared_bias"]
TINY = dict(num_classes=0, img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3)


@pytest.mark.parametrize("arch, kw, attr", [
    ("beit_base_patch16_224", {"use_rel_pos_bias": False, "use_shared_rel_pos_bias": True}, "rel_pos_bias"),
    ("vit_relpos_small_patch16_224", {"shared_rel_pos": True}, "shared_rel_pos"),
])
def test_shared_bias_becomes_a_constant(arch, kw, attr):
    model = lively(timm.create_model(arch, **{**TINY, **kw}))
    err, report, rewritten = max_err(model, (3, 32, 32), PASS)
    assert err <= 1e-5 and report.replaced["relpos_shared_bias"] == 1
    assert isinstance(getattr(rewritten, attr), ConstantBias)
    err, report, _ = max_err(model, (3, 32, 32), ["relpos_shared_bias", "relpos_attention"])  # with the blocks
    assert err <= 1e-5 and report.replaced["relpos_attention"] == 2


def test_per_block_bias_is_not_matched():
    model = lively(timm.create_model("beit_base_patch16_224", **TINY))
    _, report, _ = max_err(model, (3, 32, 32), PASS, batches=(1,))
    assert report.replaced["relpos_shared_bias"] == 0
