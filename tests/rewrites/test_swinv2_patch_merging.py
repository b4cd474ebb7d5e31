"""swinv2_patch_merging: SwinV2's merging (reduction, then norm) as one reshape/permute."""
import timm

from exporters.graph.rewrites.swin import StaticPatchMerging
from exporters.models.zoo import build_digits
from tests.rewrites.helpers import lively, max_err

PASS = ["swinv2_patch_merging"]
TINY = dict(num_classes=0, patch_size=2, window_size=4, embed_dim=24, depths=(2, 2, 2), num_heads=(1, 2, 4))


def test_swinv2_merging_is_equivalent_and_pads_only_odd_maps():
    # 56 px: 28x28, 14x14, 7x7 grids; the second merge sees an even map, none an odd one here
    model = lively(timm.create_model("swinv2_tiny_window8_256", img_size=56, **TINY))
    err, report, rewritten = max_err(model, (3, 56, 56), PASS)
    assert err <= 1e-5 and report.replaced["swinv2_patch_merging"] == 2
    assert [m.size for m in rewritten.modules() if isinstance(m, StaticPatchMerging) and m.norm_last] == [(28, 28), (14, 14)]


def test_odd_map_keeps_its_pad():
    model = lively(timm.create_model("swinv2_tiny_window8_256", img_size=28, **{**TINY, "window_size": 7,
                                                                                "strict_img_size": False}))
    err, report, _ = max_err(model, (3, 28, 28), PASS)  # 14x14, then 7x7: the second merge pads to 8x8
    assert err <= 1e-5 and report.replaced["swinv2_patch_merging"] == 2


def test_swin_v1_and_cr_merging_are_not_matched():
    _, report, _ = max_err(build_digits("digits_swin").eval(), (3, 32, 32), PASS, batches=(1,))
    assert report.replaced["swinv2_patch_merging"] == 0
    cr = lively(timm.create_model("swinv2_cr_tiny_224", img_size=32, **{**TINY, "depths": (2, 2),
                                                                         "num_heads": (1, 2)}))
    _, report, _ = max_err(cr, (3, 32, 32), PASS, batches=(1,))
    assert report.replaced["swinv2_patch_merging"] == 0
