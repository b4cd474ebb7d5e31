"""swin_window_attention: static roll, baked bias+mask, static partition (timm and torchvision)."""
import pytest
import timm
import torch
import torchvision

from exporters.graph.rewrites.swin import StaticSwinBlock, StaticWindowAttention, shifted_window_mask, static_roll
from exporters.models.zoo import DIGITS, build_digits
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

    from exporters.graph.onnx import export_onnx
    from exporters.graph.rewrites import apply_rewrites
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



def _narrow_swin(hw, window):
    """swin_t's grid (patch 4, four stages) at a tenth of its width: every window count, pad and shift of swin_t
    at ``hw``, cheap enough for 800x1344."""
    from timm.models.swin_transformer import SwinTransformer
    return SwinTransformer(img_size=hw, window_size=window, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                           num_classes=10).eval()


def test_constants_are_stored_small_and_sum_to_the_baked_bias():
    from exporters.graph.rewrites import apply_rewrites
    rewritten, _ = apply_rewrites(_digits_swin(32), (1, 3, 32, 32))
    attns = [m for m in rewritten.modules() if isinstance(m, StaticWindowAttention)]
    assert {a.labels is None for a in attns} == {True, False}  # unshifted and shifted blocks both present
    for attn in attns:
        n, nw, heads = attn.window[0] * attn.window[1], attn.num_windows, attn.num_heads
        assert tuple(attn.rel_bias.shape) == (1, heads, n, n)
        mask = torch.zeros(1, 1, n, n)
        if attn.labels is not None:
            assert tuple(attn.labels.shape) == (nw, n)
            mask = torch.from_numpy(shifted_window_mask(*attn.padded, attn.window, attn.shift))[:, None]
        baked = (attn.rel_bias + mask).expand(nw, heads, n, n).reshape(1, nw * heads, n, n)
        assert torch.equal(attn.attn_bias(), baked)  # the old one-constant bias, bit for bit


@pytest.mark.slow
@pytest.mark.parametrize("hw,window", [((224, 224), 7), ((384, 384), 12), ((800, 1344), 7)])
def test_equivalent_at_swin_t_sizes(hw, window):
    # 384: windows scaled to 12 as exporters.models.sizes does; 800x1344: 200x336 tokens, padded to whole windows
    torch.manual_seed(0)
    err, report, rewritten = max_err(_narrow_swin(hw, window), (3, *hw), PASS, batches=(1,))
    assert err <= 1e-4 and report.replaced["swin_window_attention"] == 8
    assert bool([m for m in rewritten.modules() if isinstance(m, StaticWindowAttention) and any(m.pad)]) == (
        hw == (800, 1344))


@pytest.mark.slow
def test_onnx_and_openvino_ir_carry_the_small_constants(tmp_path):
    """At 800x1344 the baked bias would be 1,392 windows x heads x 49 x 49 floats a stage-0 block (13 MB here, 40 MB
    in swin_t); the ONNX and the OpenVINO IR hold what the module stores plus at most the fold limit a block (what
    the exporters may fold), and OpenVINO's compiled model gives the same outputs as the IR with the bias folded
    into one constant."""
    import numpy as np
    import openvino as ov

    from exporters.graph.onnx import FOLD_LIMIT, export_onnx
    from exporters.graph.rewrites import apply_rewrites
    from exporters.targets._ov_constants import factor_attention_bias
    hw = (800, 1344)
    rewritten, _ = apply_rewrites(_narrow_swin(hw, 7), (1, 3, *hw))
    stored = sum(t.numel() * t.element_size() for t in (*rewritten.parameters(), *rewritten.buffers()))
    bound = stored + 8 * FOLD_LIMIT  # 8 blocks
    onnx_path = tmp_path / "m.onnx"
    export_onnx(rewritten, (1, 3, *hw), onnx_path)
    assert onnx_path.stat().st_size <= bound
    model = ov.convert_model(str(onnx_path))  # reason: convert_model folds the bias expression
    big = 1392 * 49 * 49 * 4
    assert any(op.get_byte_size() >= big for op in model.get_ops() if op.get_type_name() == "Constant")
    ov.save_model(model, str(tmp_path / "b.xml"), compress_to_fp16=False)
    assert factor_attention_bias(model, FOLD_LIMIT) >= 2
    ov.save_model(model, str(tmp_path / "f.xml"), compress_to_fp16=False)
    assert (tmp_path / "f.bin").stat().st_size <= bound < (tmp_path / "b.bin").stat().st_size
    x = np.random.default_rng(0).random((1, 3, *hw), dtype=np.float32)
    core = ov.Core()
    outs = [core.compile_model(str(tmp_path / f"{k}.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x})[0]
            for k in ("f", "b")]
    assert np.array_equal(outs[0], outs[1])
