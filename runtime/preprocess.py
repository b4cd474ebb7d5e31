"""Image preprocessing in numpy and PIL only, shared by calibration, verification and the runtime.

It reproduces timm's eval transform (``transforms_imagenet_eval``) and torchvision's
``ImageClassification`` preset bit for bit on PIL images: resize of the shorter side to
``floor(size / crop_pct)``, center crop, scale to [0, 1], normalise. Tests compare it
against timm's own transforms on real photographs.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

_PIL_INTERP = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: ``[3, H, W]`` float32, normalised, RGB channel order."""

    input_size: tuple[int, int] = (224, 224)  # (H, W)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"  # "center" (resize shorter side, then crop) or "squash"
    channel_order: str = "RGB"
    resize_size: int | None = field(default=None)  # explicit shorter-side size (torchvision presets)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        d = dict(d)
        d["input_size"] = tuple(d["input_size"])
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)

    def scale_size(self) -> int:
        """Shorter-side resize target, as timm computes it: ``floor(size / crop_pct)``."""
        if self.resize_size is not None:
            return self.resize_size
        return math.floor(max(self.input_size) / self.crop_pct)


def _resize_shorter(img: Image.Image, size: int, resample) -> Image.Image:
    # reason: torchvision.transforms.Resize(int) keeps the aspect ratio and truncates the long side
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), resample)


def _center_crop(img: Image.Image, out_h: int, out_w: int) -> Image.Image:
    # reason: torchvision's CenterCrop rounds the offsets with round(), not floor()
    w, h = img.size
    top = int(round((h - out_h) / 2.0))
    left = int(round((w - out_w) / 2.0))
    return img.crop((left, top, left + out_w, top + out_h))


def preprocess_image(img: Image.Image, pp: Preprocessing) -> np.ndarray:
    """One PIL image of any size or mode -> ``[3, H, W]`` float32, normalised."""
    img = img.convert("RGB")
    h, w = pp.input_size
    resample = _PIL_INTERP[pp.interpolation]
    if pp.crop_mode == "squash":
        scale = pp.scale_size()
        img = img.resize((int(scale * w / max(h, w)), int(scale * h / max(h, w))), resample)
    else:
        img = _resize_shorter(img, pp.scale_size(), resample)
    img = _center_crop(img, h, w)
    arr = np.asarray(img, dtype=np.float32) / 255.0  # [H, W, 3]
    if pp.channel_order == "BGR":
        arr = arr[..., ::-1]
    arr = (arr - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


def preprocess_batch(images, pp: Preprocessing) -> np.ndarray:
    """Many images (PIL, or uint8 ``[H, W, 3]`` arrays) -> ``[N, 3, H, W]`` float32."""
    out = []
    for im in images:
        if isinstance(im, np.ndarray):
            im = Image.fromarray(im)
        out.append(preprocess_image(im, pp))
    return np.stack(out) if out else np.zeros((0, 3, *pp.input_size), np.float32)
