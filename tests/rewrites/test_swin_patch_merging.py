"""swin_patch_merging: one reshape/permute, no Pad for even maps (timm and torchvision)."""
import timm
import torch
import torchvision

from exporters.graph.rewrites.swin import StaticPatchMerging
from exporters.models.zoo import build_digits
from tests.rewrites.helpers import max_err

PASS = ["swin_patch_merging"]


def test_timm_digits_swin():
    err, report, rewritten = max_err(build_digits("digits_swin").eval(), (3, 32, 32), PASS)
    assert err <= 1e-5 and report.replaced["swin_patch_merging"] == 1


def test_timm_swin_t_other_resolution():
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=448).eval()
    err, report, _ = max_err(model, (3, 448, 448), PASS, batches=(1,))
    assert err <= 1e-5 and report.replaced["swin_patch_merging"] == 3


def test_torchvision_odd_map_keeps_needed_pad():
    model = torchvision.models.swin_t().eval()
    # 200 px -> 50x50 tokens -> 25x25 after the first merge: the second merge needs a real pad
    err, report, rewritten = max_err(model, (3, 200, 200), PASS, batches=(1, 3))
    assert err <= 1e-5 and report.replaced["swin_patch_merging"] == 3
    sizes = [m.size for m in rewritten.modules() if isinstance(m, StaticPatchMerging)]
    assert (25, 25) in sizes


def test_vit_has_no_patch_merging():
    _, report, _ = max_err(build_digits("digits_vit").eval(), (3, 32, 32), PASS, batches=(1,))
    assert report.replaced["swin_patch_merging"] == 0


def test_merge_channel_order_matches_both_libraries():
    x = torch.randn(2, 6, 6, 4)
    from timm.models.swin_transformer import PatchMerging as T
    from torchvision.models.swin_transformer import PatchMerging as V
    t, v = T(4).eval(), V(4).eval()
    v.load_state_dict(t.state_dict())
    s = StaticPatchMerging(t.norm, t.reduction, (6, 6))
    with torch.no_grad():
        assert torch.allclose(s(x), t(x), atol=1e-6) and torch.allclose(s(x), v(x), atol=1e-6)
