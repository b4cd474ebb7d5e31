"""std_conv_folded: timm's weight-standardised convolutions (the hybrid ViT's ResNet) as plain ones."""
import timm
from torch import nn

from exporters.graph.rewrites.common import PaddedConv
from exporters.models.zoo import build_digits
from tests.rewrites.helpers import lively, max_err

PASS = ["std_conv_folded"]


def test_hybrid_vit_stem_is_folded_and_equivalent():
    model = lively(timm.create_model("vit_tiny_r_s16_p8_224", num_classes=0, img_size=64, embed_dim=48, depth=2,
                                     num_heads=3))
    err, report, rewritten = max_err(model, (3, 64, 64), PASS)
    assert err <= 1e-4 and report.replaced["std_conv_folded"] >= 1
    assert not any(type(m).__name__.startswith("StdConv") for m in rewritten.modules())


def test_same_padding_becomes_a_static_pad():
    from timm.layers import StdConv2d, StdConv2dSame
    for conv, size in ((StdConv2dSame(3, 8, 3, stride=2, eps=1e-8), 15), (StdConv2d(3, 8, 3, eps=1e-6), 16)):
        model = lively(nn.Sequential(conv))
        err, report, rewritten = max_err(model, (3, size, size), PASS)
        assert err <= 1e-4 and report.replaced["std_conv_folded"] == 1
        assert isinstance(rewritten[0], PaddedConv) == isinstance(conv, StdConv2dSame)


def test_plain_convolutions_are_not_matched():
    _, report, _ = max_err(build_digits("digits_vit").eval(), (3, 32, 32), PASS, batches=(1,))
    assert report.replaced["std_conv_folded"] == 0
