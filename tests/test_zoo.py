"""The model zoo: names, sources, preprocessing, labels, random-weight notes."""
import pytest
import torch

from exporters.models.zoo import ALIASES, create_model, known_names
from runtime.errors import UserError


@pytest.mark.parametrize("name,source,family", [
    ("swin_t", "timm:swin_tiny_patch4_window7_224", "swin"),
    ("vit_b_16", "timm:vit_base_patch16_224", "vit"),
    ("deit_t", "timm:deit_tiny_patch16_224", "vit"),
    ("tv:swin_t", "tv:swin_t", "swin"),
    ("timm:vit_tiny_patch16_224", "timm:vit_tiny_patch16_224", "vit"),
])
def test_names_map_to_real_models(name, source, family):
    model, spec = create_model(name)
    assert spec.source == source and spec.family == family
    assert spec.input_shape == (3, 224, 224)
    assert spec.num_classes == 1000 and len(spec.labels) == 1000
    assert spec.weights == "random" and any("RANDOM WEIGHTS" in n for n in spec.notes)
    with torch.no_grad():
        assert model(torch.zeros(1, *spec.input_shape)).shape == (1, 1000)


def test_preprocessing_comes_from_the_models_own_config():
    _, timm_spec = create_model("swin_t")
    assert timm_spec.preprocessing.interpolation == "bicubic" and timm_spec.preprocessing.crop_pct == 0.9
    _, tv_spec = create_model("tv:swin_t")
    assert tv_spec.preprocessing.resize_size == 232 and tv_spec.preprocessing.interpolation == "bicubic"
    assert tv_spec.labels[0] == "tench"


def test_digits_models_load_trained_weights():
    _, spec = create_model("digits_swin")
    assert spec.labels == [str(i) for i in range(10)] and spec.weights.endswith("digits_swin.safetensors")
    assert not any("RANDOM" in n for n in spec.notes)


def test_torchvision_zero_head_is_reinitialised_so_outputs_mean_something():
    model, spec = create_model("tv:vit_b_16")
    assert any("heads.head" in n for n in spec.notes)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).abs().max() > 0


def test_unknown_name_lists_close_names():
    with pytest.raises(UserError, match="close names: swin_t"):
        create_model("swin_tt")
    with pytest.raises(UserError, match="unknown timm model"):
        create_model("timm:not_a_model_xyz")
    with pytest.raises(UserError, match="tv:swin_t"):
        create_model("tv:swin_x")


def test_every_alias_is_known():
    assert set(ALIASES) <= set(known_names())
