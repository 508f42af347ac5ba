"""Pixel recipes: an upright RGB PIL image -> the (3, H, W) float32 array a GIT checkpoint expects.

One recipe per `compat` (constants.COMPATS), both with Pillow's bicubic resize:

  "transformers"  preprocess(im, ImageConfig): Hugging Face's CLIPImageProcessor (PIL backend), with the
                  settings of a checkpoint's preprocessor_config.json:
                      resize shortest edge -> centre crop, offsets floor((n - crop) / 2)
                      -> x * rescale_factor (float64, cast) -> (x - mean) / std (float32)
  "original"      original_pixels(im, crop_size, max_size): microsoft/GenerativeImage2Text's
                  get_image_transform (generativeimage2text/inference.py:111-132 @ faae4fb):
                      captioning (max_size None): torchvision Resize(crop_size) -> CenterCrop(crop_size),
                          offsets round((n - crop) / 2), Python's round (half to even)
                      VQA (max_size set): MinMaxResizeForTest (inference.py:29-64): the aspect ratio kept,
                          short side -> crop_size unless the long side would pass max_size; no crop
                      -> x / 255 (float32, ToTensor) -> (x - CLIP mean) / CLIP std (float32, Normalize)
                  CLIP's statistics for every checkpoint, video ones included, whatever their
                  preprocessor_config.json says (the original never reads that file).

At 224 px the two agree bit for bit except where the crop offsets do: x * (1/255) in float64 cast to float32
equals x / 255 in float32 for all 256 grey levels, and floor and round-half-even differ only when the cropped
side is longer than the crop by 3 mod 4 (a 640x427 photo: resized to 335x224, cropped from column 56, not 55).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..constants import PREPROCESSOR_FILES

# GIT's published preprocessing: OpenAI CLIP statistics, 224 px, bicubic (Pillow code 3).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The original's VQA checkpoints keep the aspect ratio: test_crop_size -> test_respect_ratio_max, from its
# aux_data/models/*/parameter.yaml (GIT_BASE_VQAv2, GIT_BASE_TEXTVQA: 480 -> 640; GIT_LARGE_VQAv2,
# GIT_LARGE_TEXTVQA: 420 -> 560). test_crop_size is the model's input resolution (our vision.image_size); every
# other checkpoint is 224, resized and cropped.
ORIGINAL_MAX_SIZE = {480: 640, 420: 560}


@dataclass
class ImageConfig:
    """The keys of `preprocessor_config.json`; defaults are GIT's published values."""

    do_resize: bool = True
    size: dict = field(default_factory=lambda: {"shortest_edge": 224})
    resample: int = Image.Resampling.BICUBIC
    do_center_crop: bool = True
    crop_size: dict = field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD
    # Read for completeness; conversion always happens because the model takes 3 channels, and
    # for an RGB image (the only kind transformers can process with this off) it changes nothing.
    do_convert_rgb: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "ImageConfig":
        cfg = cls(**{k: d[k] for k in cls.__dataclass_fields__ if d.get(k) is not None})
        # Old feature-extractor files store plain ints: size 224 means the shortest edge,
        # crop_size 224 a square (transformers' get_size_dict reads them the same way).
        if isinstance(cfg.size, int):
            cfg.size = {"shortest_edge": cfg.size}
        if isinstance(cfg.crop_size, int):
            cfg.crop_size = {"height": cfg.crop_size, "width": cfg.crop_size}
        cfg.image_mean, cfg.image_std = tuple(cfg.image_mean), tuple(cfg.image_std)
        if len(cfg.image_mean) != 3 or len(cfg.image_std) != 3:
            raise ValueError(f"image_mean and image_std need 3 values (RGB), got {cfg.image_mean}, {cfg.image_std}")
        if not ("shortest_edge" in cfg.size and len(cfg.size) == 1) and set(cfg.size) != {"height", "width"}:
            raise ValueError(f"size must be {{'shortest_edge': n}} or {{'height', 'width'}}, got {cfg.size}")
        return cfg

    @classmethod
    def from_json(cls, path) -> "ImageConfig":
        """preprocessor_config.json, or transformers 5's processor_config.json (the same keys under "image_processor")."""
        try:
            d = json.loads(Path(path).read_text())
            if Path(path).name == "processor_config.json":
                if not isinstance(d.get("image_processor"), dict):
                    raise ValueError('no "image_processor" settings in it')
                d = d["image_processor"]
            return cls.from_dict(d)
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: {e}") from e

    @classmethod
    def from_pretrained(cls, path) -> "ImageConfig | None":
        """The settings of a checkpoint directory (PREPROCESSOR_FILES, the first found), or None when it has none."""
        for name in PREPROCESSOR_FILES:
            if (Path(path) / name).is_file():
                return cls.from_json(Path(path) / name)
        return None


# ----------------------------------------------------------------------------- transformers' recipe


def resize_shape(h: int, w: int, size: dict) -> tuple[int, int]:
    """Output (h, w). Shortest edge -> n, the long edge int(n * long / short), truncated as in transformers."""
    if "shortest_edge" not in size:
        return size["height"], size["width"]
    n = size["shortest_edge"]
    if w <= h:
        return int(n * h / w), n
    return n, int(n * w / h)


def center_crop(x: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """(H, W, C) -> (ch, cw, C). Offsets floor((H - ch) / 2); a side shorter than the crop is
    zero-padded, the image placed at ceil((ch - H) / 2), as transformers' center_crop does."""
    out = np.zeros((ch, cw, x.shape[2]), dtype=x.dtype)
    src, dst = [], []
    for have, want in ((x.shape[0], ch), (x.shape[1], cw)):
        if have >= want:
            top = (have - want) // 2
            src.append(slice(top, top + want))
            dst.append(slice(0, want))
        else:
            pad = math.ceil((want - have) / 2)
            src.append(slice(0, have))
            dst.append(slice(pad, pad + have))
    out[dst[0], dst[1]] = x[src[0], src[1]]
    return out


def preprocess(im: Image.Image, cfg: ImageConfig) -> np.ndarray:
    """An RGB PIL image -> (3, H, W) float32 model input."""
    if cfg.do_resize:
        h, w = resize_shape(im.height, im.width, cfg.size)
        im = im.resize((w, h), resample=cfg.resample)
    x = np.asarray(im)  # (H, W, 3) uint8
    if cfg.do_center_crop:
        x = center_crop(x, cfg.crop_size["height"], cfg.crop_size["width"])
    if cfg.do_rescale:
        # NB: scaled in float64 then cast, as transformers' rescale does; normalise then runs
        # in float32 with float32 mean/std. Same order, same dtypes -> the same bits.
        x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    x = x.astype(np.float32)
    if cfg.do_normalize:
        x = (x - np.array(cfg.image_mean, np.float32)) / np.array(cfg.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, H, W)


# ----------------------------------------------------------------------------- the original's recipe


def original_resize_shape(h: int, w: int, crop_size: int, max_size: int | None = None) -> tuple[int, int]:
    """Output (h, w) of the original's resize. Captioning (max_size None): short side -> crop_size, the long
    side truncated (torchvision's Resize, as resize_shape). VQA: MinMaxResizeForTest.get_size (inference.py:34-54)."""
    size = crop_size
    if max_size is not None:
        short, long = min(h, w), max(h, w)
        if long / short * size > max_size:  # the long side would pass max_size: shrink the short side's target
            size = int(round(max_size * short / long))  # NB: Python's round, half to even
    # The original returns an image whose short side is already `size` as it is; so does this (long * n / n is
    # exact in floats), and Pillow's resize to the same size is a copy.
    return resize_shape(h, w, {"shortest_edge": size})


def original_pixels(im: Image.Image, crop_size: int, max_size: int | None = None) -> np.ndarray:
    """An RGB PIL image -> (3, h, w) float32 as the original's get_image_transform makes it (module docstring).

    Captioning (max_size None): (3, crop_size, crop_size). VQA (max_size set): the whole resized image, e.g.
    1024x768 -> (3, 480, 640) at 480 / 640; its sides need not be multiples of the patch size (the original's
    patch convolution drops the remainder; Processor trims it).
    """
    h, w = original_resize_shape(im.height, im.width, crop_size, max_size)
    if min(h, w) < 1:  # where the original fails inside Pillow
        raise ValueError(f"a {im.width}x{im.height} image would be resized to {w}x{h}: too far from square")
    x = np.asarray(im.resize((w, h), resample=Image.Resampling.BICUBIC))  # (h, w, 3) uint8
    if max_size is None:
        # NB: torchvision's CenterCrop offsets are int(round((n - crop) / 2)): 227 -> 224 starts at 2, not 1.
        top, left = (round((n - crop_size) / 2) for n in (h, w))
        x = x[top : top + crop_size, left : left + crop_size]
    x = x.astype(np.float32) / np.float32(255)  # ToTensor: a float32 division
    x = (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)  # Normalize, float32
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, h, w)
