"""swin_window_attention: static roll, baked bias+mask, static partition (timm and torchvision)."""
import pytest
import timm
import torch
import torchvision

from exporters.rewrites.swin import StaticSwinBlock, StaticWindowAttention, shifted_window_mask, static_roll
from exporters.zoo import DIGITS, build_digits
from tests.rewrites.helpers import max_err

PASS = ["swin_window_attention"]


def _digits_swin(img_size):
    from timm.models.swin_transformer import SwinTransformer
    return SwinTransformer(**{**DIGITS["digits_swin"][1], "img_size": img_size}).eval()


@pytest.mark.parametrize("img_size,expected", [(32, 4), (64, 4), (16, 4)])
def test_timm_digits_swin_equivalent(img_size, expected):
    # 16 px: the last stage's window (4) equals its resolution (4), so timm drops the shift there
    err, report, rewritten = max_err(_digits_swin(img_size), (3, img_size, img_size), PASS)
    assert err <= 1e-5
    assert report.replaced["swin_window_attention"] == expected
    assert sum(isinstance(m, StaticSwinBlock) for m in rewritten.modules()) == expected


@pytest.mark.slow
@pytest.mark.parametrize("img_size", [224, 256])  # 256: 64x64 tokens do not divide by window 7 -> padding kept
def test_timm_swin_t_equivalent(img_size):
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=img_size).eval()
    err, report, rewritten = max_err(model, (3, img_size, img_size), PASS)
    assert err <= 1e-5 and report.replaced["swin_window_attention"] == 12
    padded = [m for m in rewritten.modules() if isinstance(m, StaticWindowAttention) and any(m.pad)]
    assert bool(padded) == (img_size == 256)


@pytest.mark.slow
@pytest.mark.parametrize("img_size", [224, 192])  # 192: last stage 6x6 < window 7 -> padded, shift dropped
def test_torchvision_swin_t_equivalent(img_size):
    model = torchvision.models.swin_t().eval()
    err, report, _ = max_err(model, (3, img_size, img_size), PASS)
    assert err <= 1e-5 and report.replaced["swin_window_attention"] == 12


def test_non_swin_model_is_untouched():
    model = build_digits("digits_vit").eval()
    err, report, rewritten = max_err(model, (3, 32, 32), PASS)
    assert report.replaced["swin_window_attention"] == 0 and err == 0.0
    assert not any(isinstance(m, StaticWindowAttention) for m in rewritten.modules())


def test_swin_v2_is_not_matched():
    model = torchvision.models.swin_v2_t().eval()
    _, report, _ = max_err(model, (3, 64, 64), PASS, batches=(1,))
    assert report.replaced["swin_window_attention"] == 0


def test_static_roll_equals_torch_roll():
    x = torch.arange(2 * 5 * 7 * 3, dtype=torch.float32).reshape(2, 5, 7, 3)
    for sh, sw in [(-2, -3), (2, 3), (0, 4), (5, -7)]:
        assert torch.equal(static_roll(x, sh, sw, 5, 7), torch.roll(x, (sh, sw), dims=(1, 2)))


def test_mask_matches_timm():
    block = _digits_swin(32).layers[0].blocks[1]  # a shifted block
    ours = torch.from_numpy(shifted_window_mask(16, 16, block.window_size, block.shift_size))
    assert torch.equal(ours, block.get_attn_mask(torch.zeros(1, 16, 16, 1)))


def test_original_model_is_not_modified():
    model = _digits_swin(32)
    before = type(model.layers[0].blocks[0])
    max_err(model, (3, 32, 32), PASS, batches=(1,))
    assert type(model.layers[0].blocks[0]) is before


def test_attention_is_four_d_with_no_reshape_before_softmax(tmp_path):
    """Every Softmax reads ``Add(MatMul(q, k), bias)`` on 4-D tensors: the form OpenVINO fuses into one MHA kernel.

    A shifted block in timm's form has Reshape -> Add(mask) -> Reshape between the MatMul and the Softmax.
    """
    import onnx

    from exporters.onnx import export_onnx
    from exporters.rewrites import apply_rewrites
    model = _digits_swin(32)
    rewritten, _ = apply_rewrites(model, (1, 3, 32, 32))
    exp = export_onnx(rewritten, (2, 3, 32, 32), tmp_path / "m.onnx")
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(exp.path)))
    producer = {o: n for n in proto.graph.node for o in n.output}
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in proto.graph.value_info}
    softmaxes = [n for n in proto.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 4
    for sm in softmaxes:
        add = producer[sm.input[0]]
        assert add.op_type == "Add" and ranks[sm.input[0]] == 4
        kinds = {producer[i].op_type if i in producer else "initializer" for i in add.input}
        assert "MatMul" in kinds and "Reshape" not in kinds



def test_bias_is_stored_once_per_window_and_head_and_broadcasts_over_batch():
    from exporters.rewrites import apply_rewrites
    rewritten, _ = apply_rewrites(_digits_swin(32), (1, 3, 32, 32))
    for attn in (m for m in rewritten.modules() if isinstance(m, StaticWindowAttention)):
        n = attn.window[0] * attn.window[1]
        assert tuple(attn.bias.shape) == (1, attn.num_windows * attn.num_heads, n, n)
