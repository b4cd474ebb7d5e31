"""numpy/PIL preprocessing is the same as timm's and torchvision's own transforms on real photos."""
import numpy as np
import pytest
from PIL import Image

from exporters.models.zoo import create_model
from runtime.preprocess import Preprocessing, preprocess_image


@pytest.mark.parametrize("name", ["swin_t", "vit_b", "deit_t"])
def test_matches_timm_eval_transform(name, sample_photos):
    from timm.data import create_transform, resolve_data_config

    model, spec = create_model(name)
    transform = create_transform(**resolve_data_config({}, model=model))
    for path in sample_photos:
        with Image.open(path) as im:
            ours = preprocess_image(im, spec.preprocessing)
            theirs = transform(im.convert("RGB")).numpy()
        assert ours.shape == theirs.shape == spec.input_shape
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("name", ["tv:swin_t", "tv:vit_b_16"])
def test_matches_torchvision_preset(name, sample_photos):
    import torchvision

    _, spec = create_model(name)
    arch = name[3:]
    weights = getattr(torchvision.models, {"swin_t": "Swin_T_Weights", "vit_b_16": "ViT_B_16_Weights"}[arch])
    transform = weights.IMAGENET1K_V1.transforms()
    for path in sample_photos:
        with Image.open(path) as im:
            ours = preprocess_image(im, spec.preprocessing)
            theirs = transform(im.convert("RGB")).numpy()
        # torchvision resizes PIL images through its tensor path with antialias: allow its rounding
        np.testing.assert_allclose(ours, theirs, atol=0.05)
        assert np.abs(ours - theirs).mean() < 0.01


def test_odd_sizes_and_modes_are_resized_never_misshaped():
    pp = Preprocessing(input_size=(32, 32), interpolation="bilinear", crop_pct=1.0)
    for size, mode in [((7, 300), "L"), ((500, 40), "RGBA"), ((32, 32), "P")]:
        assert preprocess_image(Image.new(mode, size), pp).shape == (3, 32, 32)


def test_round_trip_dict():
    pp = Preprocessing(input_size=(224, 224), resize_size=232)
    assert Preprocessing.from_dict(pp.to_dict()) == pp


def test_sixteen_bit_and_float_images_map_by_their_range_not_clipped(tmp_path):
    """A 16-bit greyscale PNG (PIL mode I;16 / I) and a float image in [0, 1] give the pixels of their 8-bit
    equivalent, where PIL's own convert("RGB") clips them to white."""
    import numpy as np
    from PIL import Image

    from runtime.preprocess import Preprocessing, open_image, preprocess_image
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert np.array_equal(np.asarray(open_image(tmp_path / "g16.png"))[..., 0], grey8)
    pp = Preprocessing(input_size=(32, 32))
    want = preprocess_image(Image.fromarray(grey8), pp)
    assert np.array_equal(preprocess_image(Image.fromarray(grey8.astype(np.float32) / 255.0, "F"), pp), want)
    assert np.array_equal(preprocess_image(Image.open(tmp_path / "g16.png"), pp), want)


def test_non_finite_inputs_and_unknown_feeds_are_refused(digits_bundles):
    import numpy as np
    import pytest

    import runtime
    from runtime.errors import UserError
    out, _ = digits_bundles
    with runtime.open(out / "digits_vit", target="onnxruntime", precision="fp32") as s:
        x = np.zeros((1, 3, 32, 32), np.float32)
        x[0, 0, 0, 0] = np.nan
        with pytest.raises(UserError, match="holds NaN or infinite values"):
            s.infer({s.runner.input_name: x})
        with pytest.raises(UserError, match="unknown feed name"):
            s.infer({s.runner.input_name: np.zeros((1, 3, 32, 32), np.float32), "extra": x})
