"""vit_embed: tokens and position embedding baked into one constant, resolved for the resolution."""
import pytest
import timm
import torch
from torchvision.models.vision_transformer import VisionTransformer as TvViT

from exporters.graph.rewrites.vit import StaticTimmViT, StaticTvViT
from exporters.models.zoo import build_digits
from tests.rewrites.helpers import max_err

PASS = ["vit_embed"]


def test_timm_digits_vit():
    err, report, rewritten = max_err(build_digits("digits_vit").eval(), (3, 32, 32), PASS)
    assert err <= 1e-5 and report.replaced["vit_embed"] == 1 and isinstance(rewritten, StaticTimmViT)


def test_timm_dynamic_size_resolves_pos_embed_for_the_export_resolution():
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, dynamic_img_size=True).eval()
    err, report, rewritten = max_err(model, (3, 96, 96), PASS)  # 6x6 grid from a 4x4 table
    assert err <= 1e-5 and rewritten.tokens.tokens.shape[1] == 1 + 36


@pytest.mark.parametrize("kwargs", [dict(class_token=False, global_pool="avg"), dict(reg_tokens=2),
                                    dict(no_embed_class=True)])
def test_timm_token_variants(kwargs):
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, **kwargs).eval()
    err, report, _ = max_err(model, (3, 32, 32), PASS)
    assert err <= 1e-5 and report.replaced["vit_embed"] == 1


def test_torchvision_vit():
    model = TvViT(image_size=64, patch_size=16, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    err, report, rewritten = max_err(model, (3, 64, 64), PASS)
    assert err <= 1e-5 and isinstance(rewritten, StaticTvViT)


def test_swin_is_not_wrapped():
    _, report, rewritten = max_err(build_digits("digits_swin").eval(), (3, 32, 32), PASS, batches=(1,))
    assert report.replaced["vit_embed"] == 0 and not isinstance(rewritten, (StaticTimmViT, StaticTvViT))


def test_dinov2_register_vit_interpolates_its_position_embedding_once():
    from tests.rewrites.helpers import lively
    # DINOv2 with 4 registers, trained at 518: exported at 56 px the 37x37 table is resampled to 4x4, once
    model = lively(timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=0, img_size=518, depth=1,
                                     dynamic_img_size=True))
    err, report, rewritten = max_err(model, (3, 56, 56), PASS)
    assert err <= 1e-4 and report.replaced["vit_embed"] == 1
    assert rewritten.tokens.tokens.shape[1] == 1 + 4 + 16


def test_hybrid_vit_runs_its_cnn_stem_then_the_baked_tokens():
    from tests.rewrites.helpers import lively
    model = lively(timm.create_model("vit_tiny_r_s16_p8_224", num_classes=0, img_size=64, embed_dim=48, depth=1,
                                     num_heads=3))
    err, report, rewritten = max_err(model, (3, 64, 64), PASS)
    assert err <= 1e-4 and report.replaced["vit_embed"] == 1 and isinstance(rewritten, StaticTimmViT)
