"""Image preprocessing equal to transformers' PIL image processors (ViTImageProcessorPil,
BitImageProcessorPil (DINOv2), CLIPImageProcessorPil, SiglipImageProcessorPil):

    convert to RGB (transparency composited on white) -> resize with PIL (the filter the
    processor names, on uint8 pixels, as transformers' `image_transforms.resize`) ->
    center crop (zero-padded if the image is smaller) -> rescale (float64 multiply, then
    float32) -> normalize ((x - mean) / std in float32) -> (C, H, W) float32.

Resizing is Pillow's own, so the result is bit-identical to transformers' PIL backend.
Pillow is imported lazily: only image input needs it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.errors import ConfigError, InputError, UnsupportedError
from edgeformer.extras import require

# transformers image_utils constants
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Largest image decoded or made by resizing: 2^25 pixels (e.g. 8192 x 4096, 128 MiB as
# RGBA). A file's size is checked from its header before any pixel is decoded (Pillow's
# own bomb check allows 179 M).
MAX_PIXELS = 1 << 25

# Image formats decoded (Pillow's names): the common photo and web ones. Pillow knows ~40
# more (EPS runs Ghostscript when installed; FITS, PSD, DDS...), none wanted from a request.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")   # JPEG covers MPO (phones)

# PIL.Image.Resampling values, as transformers' PILImageResampling
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


@dataclass(frozen=True)
class ImageProcessor:
    """size: {"height": h, "width": w} or {"shortest_edge": s}; crop: (h, w) or None;
    rescale: factor or None; mean/std: per channel or None (no normalize)."""

    size: Mapping[str, int]
    resample: str = "bicubic"
    crop: tuple[int, int] | None = None
    rescale: float | None = 1 / 255
    mean: tuple[float, ...] | None = IMAGENET_STANDARD_MEAN
    std: tuple[float, ...] | None = IMAGENET_STANDARD_STD
    do_resize: bool = True

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE:
            raise ConfigError(f"unknown resample {self.resample!r}; supported: {', '.join(RESAMPLE)}")
        keys = set(self.size)
        if keys not in ({"height", "width"}, {"shortest_edge"}):
            raise ConfigError(f"size must be {{height, width}} or {{shortest_edge}}, got {dict(self.size)}")
        if any(int(v) <= 0 for v in self.size.values()):
            raise ConfigError(f"size values must be positive, got {dict(self.size)}")

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> "ImageProcessor":
        """From a `preprocessor_config.json` dict (keys as transformers' processors)."""
        size = cfg.get("size", {"height": 224, "width": 224})
        if isinstance(size, int):
            size = {"shortest_edge": size} if cfg.get("default_to_square") is False else {"height": size, "width": size}
        if "shortest_edge" in size:
            if size.get("longest_edge"):
                raise UnsupportedError("size with both shortest_edge and longest_edge is not supported")
            size = {"shortest_edge": size["shortest_edge"]}
        rs = cfg.get("resample", 2)
        names = {v: k for k, v in RESAMPLE.items()}
        if rs not in names:
            raise ConfigError(f"unknown resample {rs!r}")
        crop = None
        if cfg.get("do_center_crop"):
            cs = cfg.get("crop_size", {"height": 224, "width": 224})
            crop = (cs, cs) if isinstance(cs, int) else (int(cs["height"]), int(cs["width"]))
        return cls(dict(size), names[rs], crop,
                   float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None,
                   tuple(cfg.get("image_mean", IMAGENET_STANDARD_MEAN)) if cfg.get("do_normalize", True) else None,
                   tuple(cfg.get("image_std", IMAGENET_STANDARD_STD)) if cfg.get("do_normalize", True) else None,
                   bool(cfg.get("do_resize", True)))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) after resizing (transformers get_resize_output_image_size, not square)."""
        if "height" in self.size:
            return int(self.size["height"]), int(self.size["width"])
        s = int(self.size["shortest_edge"])
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(s * long / short)
        return (new_long, s) if width <= height else (s, new_long)

    def __call__(self, image: Any) -> np.ndarray:
        """A PIL image, or an (H, W, 3|4) / (H, W) uint8 array -> (3, H', W') float32."""
        Image = require("PIL.Image", "vision", "image input")
        img = to_rgb(image)
        h, w = self.output_size(img.height, img.width) if self.do_resize else (img.height, img.width)
        if h * w > MAX_PIXELS:      # a thin strip resized to a shortest edge grows by its aspect ratio
            raise InputError(f"image of {img.width} x {img.height} pixels would resize to {w} x {h}, over the "
                             f"limit of {MAX_PIXELS} pixels")
        if (h, w) != (img.height, img.width):
            img = img.resize((w, h), resample=Image.Resampling(RESAMPLE[self.resample]))
        x = np.array(img).transpose(2, 0, 1)                 # (H, W, 3) uint8 -> (3, H, W)
        if self.crop is not None:
            x = center_crop(x, *self.crop)
        if self.rescale is not None:
            x = (x.astype(np.float64) * self.rescale).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if self.mean is not None and self.std is not None:
            mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.std, dtype=np.float32)[:, None, None]
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)


def center_crop(x: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """(C, H, W) -> (C, ch, cw) centered (top = (H - ch) // 2); an image smaller than the
    crop is zero-padded first, as transformers' `center_crop`."""
    _, h, w = x.shape
    if h < ch or w < cw:
        nh, nw = max(h, ch), max(w, cw)
        pad = np.zeros(x.shape[:1] + (nh, nw), dtype=x.dtype)
        top, left = -(-(nh - h) // 2), -(-(nw - w) // 2)     # ceil, as transformers
        pad[:, top:top + h, left:left + w] = x
        x, h, w = pad, nh, nw
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[:, top:top + ch, left:left + cw]


def to_rgb(image: Any) -> Any:
    """A PIL RGB image from a PIL image or uint8 array; transparency is composited on
    white (transformers `convert_to_rgb`). InputError for anything else."""
    Image = require("PIL.Image", "vision", "image input")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise InputError(f"image array must be uint8 (H, W), (H, W, 3) or (H, W, 4), got {image.dtype}{list(image.shape)}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise InputError(f"not an image: {type(image).__name__}")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike) -> Any:
    """Open and fully decode an image file (PIL). InputError if it is missing, is not
    a readable image in one of FORMATS, or has more than MAX_PIXELS pixels."""
    Image = require("PIL.Image", "vision", "image input")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such image file")
    try:
        with Image.open(p, formats=FORMATS) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InputError(f"{p}: image of {w} x {h} pixels is over the limit of {MAX_PIXELS} pixels")
            im.load()   # decode now: a truncated file fails here, not later
            return im.copy()
    except InputError:
        raise
    except Exception as e:   # Pillow's decoders raise OSError, SyntaxError, struct.error, EOFError, bombs...
        raise InputError(f"{p}: not a readable image ({type(e).__name__}: {str(e)[:200]})") from None


# Processors as transformers' PIL classes default them (class attributes of
# ViTImageProcessorPil, BitImageProcessorPil, CLIPImageProcessorPil, SiglipImageProcessorPil).
PRESETS: dict[str, ImageProcessor] = {
    "vit": ImageProcessor({"height": 224, "width": 224}, "bilinear"),
    "bit": ImageProcessor({"shortest_edge": 224}, "bicubic", (224, 224), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
    "clip": ImageProcessor({"shortest_edge": 224}, "bicubic", (224, 224), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
    "siglip": ImageProcessor({"height": 224, "width": 224}, "bicubic"),
    # facebook/dinov2-* preprocessor_config.json: BitImageProcessor, shortest edge 256,
    # crop 224, ImageNet default mean/std
    "dinov2": ImageProcessor({"shortest_edge": 256}, "bicubic", (224, 224), mean=IMAGENET_DEFAULT_MEAN,
                             std=IMAGENET_DEFAULT_STD),
}

