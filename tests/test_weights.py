"""Checkpoint loading in timm and torchvision layouts, and its failures."""
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from exporters.models.zoo import create_model
from runtime.errors import UserError


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "pt-wrapped"])
def test_timm_layout_round_trip(tmp_path, fmt):
    model, _ = create_model("digits_vit")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pt")
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}} if fmt == "pt-wrapped" else sd, path)
    loaded, spec = create_model("digits_vit", weights=path)
    assert spec.weights == str(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_torchvision_layout_loads_into_timm_swin(tmp_path):
    tv = torchvision.models.swin_t().eval()
    path = tmp_path / "tv_swin_t.pth"
    torch.save(tv.state_dict(), path)
    timm_model, _ = create_model("swin_t", weights=path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(tv(x), timm_model(x), atol=1e-5)


def test_torchvision_layout_into_torchvision_model(tmp_path):
    tv = torchvision.models.swin_t().eval()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    loaded, _ = create_model("tv:swin_t", weights=path)
    assert torch.equal(loaded.head.weight, tv.head.weight)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        create_model("digits_vit", weights=tmp_path / "nope.safetensors")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights file"):
        create_model("digits_vit", weights=bad)


def test_wrong_model_checkpoint_names_shape_mismatch(tmp_path):
    swin, _ = create_model("digits_swin")
    path = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in swin.state_dict().items()}, str(path))
    with pytest.raises(UserError, match="does not fit"):
        create_model("digits_vit", weights=path)
    vit, _ = create_model("digits_vit")
    sd = {k: v.contiguous() for k, v in vit.state_dict().items()}
    sd["head.weight"] = torch.zeros(7, sd["head.weight"].shape[1])
    save_file(sd, str(path))
    with pytest.raises(UserError, match="shape mismatch.*head.weight"):
        create_model("digits_vit", weights=path)


def test_weights_and_pretrained_are_exclusive(tmp_path):
    with pytest.raises(UserError, match="not both"):
        create_model("swin_t", weights=tmp_path / "x.pt", pretrained=True)
