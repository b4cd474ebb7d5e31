"""Image preprocessing in numpy and PIL only, shared by calibration, verification and the runtime.

It reproduces timm's eval transform (``transforms_imagenet_eval``) and torchvision's
``ImageClassification`` preset bit for bit on PIL images: resize of the shorter side to
``floor(size / crop_pct)``, center crop, scale to [0, 1], normalise. Tests compare it
against timm's own transforms on real photographs.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.errors import UserError

# Images above this many pixels are refused before they are decoded (decompression bombs): the
# limit is PIL's own warning threshold; set VITDEPLOY_MAX_PIXELS to change it.
DEFAULT_MAX_PIXELS = 89_478_485
MAX_ASPECT = 100  # longer side / shorter side; beyond it the resize would ask for absurd sizes

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


class ImageRejected(UserError):
    """An image refused before decoding: too many pixels, an absurd aspect ratio, or no pixels at all."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # "no pixels" | "over the pixel limit" | "aspect ratio"


def max_pixels() -> int:
    value = os.environ.get("VITDEPLOY_MAX_PIXELS")
    try:
        return int(value) if value else DEFAULT_MAX_PIXELS
    except ValueError:
        raise UserError(f"VITDEPLOY_MAX_PIXELS must be a whole number (got {value!r})") from None


def check_image_size(width: int, height: int, limit: int | None = None) -> None:
    """Refuse a ``width x height`` image that is empty, too large or absurdly elongated."""
    limit = max_pixels() if limit is None else limit
    if width < 1 or height < 1:
        raise ImageRejected(f"image has no pixels ({width}x{height})", "no pixels")
    if width * height > limit:
        raise ImageRejected(f"image of {width}x{height} = {width * height:,} pixels is over the limit of "
                            f"{limit:,} (decompression bomb?); set VITDEPLOY_MAX_PIXELS to allow it",
                            "over the pixel limit")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageRejected(f"image of {width}x{height} has an aspect ratio over {MAX_ASPECT}:1", "aspect ratio")


def open_image(path: str | Path, limit: int | None = None) -> Image.Image:
    """Open and decode an image file to RGB, refusing bombs and absurd shapes before decoding.

    Raises ``ImageRejected`` for the size checks and ``UserError`` for a file PIL cannot decode.
    """
    previous = Image.MAX_IMAGE_PIXELS
    try:
        # reason: PIL's own bomb check (a module global) would refuse at open with its fixed limit before
        # ours runs; ours is stated and configurable, so PIL's is lifted for this one open and restored
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                check_image_size(*im.size, limit=limit)
                return to_rgb(im)
    except ImageRejected:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # reason: PIL raises these for corrupt, truncated or bomb files, before or during decoding
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(f"cannot decode image {path}: {first}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, mapping high-bit-depth and float pixels by their range instead of clipping.

    # reason: PIL's convert("RGB") clips 16-bit ("I;16", "I") and float ("F") pixels at 255, so a 16-bit greyscale
    # PNG became all white and came back as a confident wrong prediction. 16-bit maps 0..65535 onto 0..255; float
    # images in [0, 1] are scaled by 255 (others clipped to 0..255). EXIF orientation is NOT applied, as timm's and
    # torchvision's loaders do not apply it when models are trained and evaluated: the pixels are used as stored.
    """
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        img = Image.fromarray(np.clip(np.rint(arr * 255.0 / top), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if arr.size and arr.min() >= 0 and arr.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")  # a loaded copy even when already RGB: the caller may close the file


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
    check_image_size(*img.size)
    img = to_rgb(img)
    h, w = pp.input_size
    resample = _PIL_INTERP[pp.interpolation]
    if pp.crop_mode == "squash":
        scale = pp.scale_size()
        img = img.resize((int(scale * w / max(h, w)), int(scale * h / max(h, w))), resample)
    else:
        img = _resize_shorter(img, pp.scale_size(), resample)
    img = _center_crop(img, h, w)
    return normalise(np.asarray(img, dtype=np.uint8)[None], pp)[0]


def normalise(pixels: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """uint8 RGB pixels ``[N, H, W, 3]`` (resized and cropped) -> ``[N, 3, H, W]`` float32, normalised: the last
    step of ``preprocess_image``, shared with the golden set so a bundle's preprocessing is checked with it."""
    arr = pixels.astype(np.float32) / 255.0
    if pp.channel_order == "BGR":
        arr = arr[..., ::-1]
    arr = (arr - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2), dtype=np.float32)


def pixels_from_inputs(inputs: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """The inverse of ``normalise``: ``[N, 3, H, W]`` normalised inputs -> uint8 RGB ``[N, H, W, 3]``, exact for
    inputs that came from 8-bit images (rounded and clipped otherwise)."""
    arr = inputs.transpose(0, 2, 3, 1).astype(np.float64) * np.asarray(pp.std) + np.asarray(pp.mean)
    if pp.channel_order == "BGR":
        arr = arr[..., ::-1]
    return np.ascontiguousarray(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8))


def preprocess_batch(images, pp: Preprocessing) -> np.ndarray:
    """Many images (PIL, or uint8 ``[H, W, 3]`` arrays) -> ``[N, 3, H, W]`` float32."""
    out = []
    for im in images:
        if isinstance(im, np.ndarray):
            im = Image.fromarray(im)
        out.append(preprocess_image(im, pp))
    return np.stack(out) if out else np.zeros((0, 3, *pp.input_size), np.float32)
