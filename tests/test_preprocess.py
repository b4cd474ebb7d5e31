"""numpy/PIL preprocessing is the same as timm's and torchvision's own transforms on real photos."""
import numpy as np
import pytest
from PIL import Image

from exporters.zoo import create_model
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
