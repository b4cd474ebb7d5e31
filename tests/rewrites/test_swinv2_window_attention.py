"""swinv2_window_attention: SwinV2's continuous bias (MLP), cosine-attention scale and shift mask baked, static roll."""
import pytest
import timm
import torch

from exporters.graph.rewrites.swin import StaticWindowAttention
from exporters.graph.rewrites.swinv2 import StaticSwinV2Block
from exporters.models.zoo import build_digits
from tests.rewrites.helpers import lively, max_err

PASS = ["swinv2_window_attention"]
TINY = dict(num_classes=0, patch_size=2, window_size=4, embed_dim=24, depths=(2, 2), num_heads=(2, 4))


@pytest.mark.parametrize("arch, size", [("swinv2_tiny_window8_256", 32), ("swinv2_tiny_window8_256", 48),
                                        ("swinv2_cr_tiny_224", 32), ("swinv2_cr_tiny_224", 48)])
def test_swinv2_and_cr_are_equivalent(arch, size):
    model = lively(timm.create_model(arch, img_size=size, **TINY))
    err, report, rewritten = max_err(model, (3, size, size), PASS)
    assert err <= 2e-5 and report.replaced["swinv2_window_attention"] == 4
    attn = [m for m in rewritten.modules() if isinstance(m, StaticWindowAttention)]
    assert len(attn) == 4 and all(a.cosine for a in attn)
    assert any(any(a.shift) for a in attn) and any(not any(a.shift) for a in attn)  # shifted blocks included


def test_padded_windows_and_clamped_scales():
    # 40 px: a 20x20 grid, then 10x10, windows of 8 (timm clamps the window to the grid) need padding
    model = lively(timm.create_model("swinv2_tiny_window8_256", img_size=40, **{**TINY, "window_size": 8}), seed=3)
    with torch.no_grad():
        model.layers[0].blocks[1].attn.logit_scale[0] = 6.0  # above the clamp at log(100) = 4.6
    err, report, rewritten = max_err(model, (3, 40, 40), PASS)
    assert err <= 2e-5 and report.replaced["swinv2_window_attention"] == 4
    assert any(any(m.pad) for m in rewritten.modules() if isinstance(m, StaticWindowAttention))


@pytest.mark.slow
def test_full_size_swinv2_tiny_has_no_bias_mlp_or_roll_left():
    model = lively(timm.create_model("swinv2_tiny_window8_256", num_classes=0))
    err, report, rewritten = max_err(model, (3, 256, 256), PASS, batches=(1,))
    assert err <= 1e-4 and report.replaced["swinv2_window_attention"] == 12
    assert not any(type(m).__name__ == "WindowAttention" for m in rewritten.modules())
    assert sum(isinstance(m, StaticSwinV2Block) for m in rewritten.modules()) == 12


def test_swin_v1_is_not_matched():
    _, report, _ = max_err(build_digits("digits_swin").eval(), (3, 32, 32), PASS, batches=(1,))
    assert report.replaced["swinv2_window_attention"] == 0
