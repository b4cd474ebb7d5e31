"""vit_attention: explicit MatMul-Softmax-MatMul, static qkv slicing, scale folded into qkv."""
import pytest
import timm
import torch
from torchvision.models.vision_transformer import VisionTransformer as TvViT

from exporters.graph.rewrites.vit import StaticAttention
from exporters.models.zoo import build_digits
from tests.rewrites.helpers import max_err

PASS = ["vit_attention"]


@pytest.mark.parametrize("img_size", [32, 48])
def test_timm_digits_vit(img_size):
    from timm.models.vision_transformer import VisionTransformer

    from exporters.models.zoo import DIGITS
    model = VisionTransformer(**{**DIGITS["digits_vit"][1], "img_size": img_size}).eval()
    err, report, _ = max_err(model, (3, img_size, img_size), PASS)
    assert err <= 1e-5 and report.replaced["vit_attention"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("img_size", [224, 160])
def test_timm_vit_small(img_size):
    model = timm.create_model("vit_small_patch16_224", img_size=img_size).eval()
    err, report, _ = max_err(model, (3, img_size, img_size), PASS)
    assert err <= 1e-5 and report.replaced["vit_attention"] == 12


@pytest.mark.parametrize("img_size", [64, 96])
def test_torchvision_vit(img_size):
    model = TvViT(image_size=img_size, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    err, report, rewritten = max_err(model, (3, img_size, img_size), PASS)
    assert err <= 1e-5 and report.replaced["vit_attention"] == 2
    assert sum(isinstance(m, StaticAttention) for m in rewritten.modules()) == 2


def test_qk_norm_attention_is_left_alone():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, qk_norm=True).eval()
    err, report, _ = max_err(model, (3, 32, 32), PASS, batches=(1,))
    assert report.replaced["vit_attention"] == 0 and err == 0.0


def test_swin_is_not_matched():
    _, report, _ = max_err(build_digits("digits_swin").eval(), (3, 32, 32), PASS, batches=(1,))
    assert report.replaced["vit_attention"] == 0
