"""Image (and prompt) preprocessing for GIT: the pixels the published checkpoints expect.

A GIT checkpoint directory carries `preprocessor_config.json`, written by Hugging Face's
CLIPImageProcessor. We read the same keys and reproduce its PIL backend step by step:

    file / PIL / array -> upright (EXIF) -> RGB (alpha onto white) -> resize shortest edge
    -> center crop -> x * rescale_factor -> (x - mean) / std -> (3, H, W) float32

Pixel values equal transformers' `CLIPImageProcessorPil` built from the same file (the tests
check every mode Pillow opens and real photographs). Three deliberate differences, all about
inputs transformers treats inconsistently:
  * EXIF orientation is always applied. transformers applies it only to images given as path
    strings (its `load_image`), never to PIL images or arrays, so a phone photo handed over as a
    PIL image reaches the model sideways there.
  * Transparency is always composited onto white. transformers does that for PIL images, but
    its path-string route calls `.convert("RGB")`, which drops alpha and keeps whatever colour
    sits under transparent pixels (often black).
  * 16-bit grayscale (`I;16*`, and `I` holding values above 255) is scaled to 8 bits
    (v / 257). Pillow's own conversion, which transformers uses, clips at 255, so a 16-bit photo
    turns almost white.

Usage:
    processor = Processor.from_pretrained("checkpoints/git-base")
    batch = processor(images=["cat.jpg", pil_image], text="what is this?")
    batch["pixel_values"]   # (B, 3, 224, 224) float32
    batch["input_ids"]      # (B, T) int64: [CLS] + prompt tokens, right-padded with 0
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import TextConfig
from .constants import PREPROCESSOR_FILES, VIDEO_EXTS
from .tokenizer import Tokenizer, special_ids_disagree

# GIT's published preprocessing: OpenAI CLIP statistics, 224 px, bicubic (Pillow code 3).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PILLOW_LIMIT = -1  # max_pixels default: Pillow's Image.MAX_IMAGE_PIXELS, read at call time


def printable(name: str) -> str:
    """An input name (or question) as a text or error line shows it: as it is, or as Python's repr() when it
    holds a character that is not printable (a newline or tab, any other control or separator character, a
    byte that is not UTF-8) or starts with a quote. So each result stays one line, and a field that starts
    with a quote is always a repr (ast.literal_eval gives the name back). --json and --output are exact."""
    return repr(name) if not name.isprintable() or name.startswith(("'", '"')) else name


class ImageLoadError(ValueError):
    """An image file that cannot be used; `str(err)` is one line naming the file and the reason."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")


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


def no_preprocessing_settings(path) -> str:
    """The warning for a checkpoint without preprocessing settings: which defaults are used instead."""
    d = ImageConfig()
    return (f"{path} has no preprocessing settings ({' or '.join(PREPROCESSOR_FILES)}); using GIT's published "
            f"defaults: shortest edge resized to {d.size['shortest_edge']} (bicubic), centre crop "
            f"{d.crop_size['height']}x{d.crop_size['width']}, CLIP mean and std")


# ----------------------------------------------------------------------------- loading


@contextmanager
def open_image(path, max_pixels: int | None = PILLOW_LIMIT):
    """`with open_image(path) as im:` Image.open with checks; any failure to read the file, in the
    open or inside the block (decoding, seeking frames), becomes an ImageLoadError naming it.

    max_pixels is the decompression-bomb budget (width * height), checked from the header
    before any pixel is decoded. PILLOW_LIMIT (default) means Pillow's `Image.MAX_IMAGE_PIXELS`
    at call time; None means no budget of ours. Pillow's own hard stop (twice its limit) still
    applies unless `Image.MAX_IMAGE_PIXELS` is raised.
    """
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(p, "no such file")
    if not p.is_file():
        raise ImageLoadError(p, "not a file")
    if p.stat().st_size == 0:
        raise ImageLoadError(p, "empty file (0 bytes)")
    budget = Image.MAX_IMAGE_PIXELS if max_pixels == PILLOW_LIMIT else max_pixels
    try:
        with warnings.catch_warnings():
            # We enforce our own budget below; Pillow's warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if budget is not None and w * h > budget:
                    raise ImageLoadError(p, f"{w}x{h} = {w * h} pixels is over the budget of {budget} "
                                            "(possible decompression bomb)")
                yield im
    except Image.DecompressionBombError as e:
        raise ImageLoadError(p, f"over Pillow's decompression-bomb limit: {e}") from e
    except UnidentifiedImageError as e:
        if p.suffix.lower() in VIDEO_EXTS:
            raise ImageLoadError(p, f"a video file ({p.suffix}), not an image: caption videos with "
                                    "`git-scratch video`") from e
        raise ImageLoadError(p, "not an image Pillow can read") from e
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, EOFError, ValueError, IndexError, struct.error) as e:
        # Decoder failures, whatever Pillow's plugins raise: truncated JPEGs ("image file is
        # truncated"), corrupt PNG chunks (SyntaxError), cut GIFs (IndexError).
        raise ImageLoadError(p, f"truncated or corrupt image data ({e})") from e


def load_image(path, max_pixels: int | None = PILLOW_LIMIT) -> Image.Image:
    """An image file, fully decoded and upright (EXIF applied), or ImageLoadError saying why not.
    A multi-frame file (GIF, TIFF) gives its first frame; video.py reads the others."""
    with open_image(path, max_pixels) as im:
        return ImageOps.exif_transpose(im)  # a decoded copy, detached from the open file


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB as transformers' PIL backend converts it, except 16-bit (module docstring)."""
    if im.mode.startswith("I;16") or (im.mode == "I" and im.getextrema()[1] > 255):
        # 16-bit grayscale: scale 0..65535 onto 0..255 instead of clipping (Pillow's way).
        a = np.asarray(im).astype(np.float64).clip(0, 65535)
        im = Image.fromarray(np.round(a / 257).astype(np.uint8))
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        # Alpha (RGBA, LA, PA) or a transparent palette/colour key: composite onto white.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def as_pil(image, max_pixels: int | None = PILLOW_LIMIT) -> Image.Image:
    """A path, PIL image or HWC uint8 array -> an upright RGB PIL image."""
    if isinstance(image, (str, Path)):
        return to_rgb(load_image(image, max_pixels))
    if isinstance(image, Image.Image):
        return to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"arrays must be uint8 (H, W) or (H, W, 1|3|4), got {image.dtype} {image.shape}")
        return to_rgb(Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image))
    raise TypeError(f"images must be paths, PIL images or numpy uint8 arrays, got {type(image).__name__}")


# ----------------------------------------------------------------------------- pixels


def resize_shape(h: int, w: int, size: dict) -> tuple[int, int]:
    """Output (h, w). Shortest edge -> n, the long edge int(n * long / short), truncated as in transformers."""
    if "shortest_edge" not in size:
        return size["height"], size["width"]
    n = size["shortest_edge"]
    if w <= h:
        return int(n * h / w), n
    return n, int(n * w / h)


def check_resize(im: Image.Image, cfg: "ImageConfig", max_pixels: int | None, name=None) -> None:
    """Refuse, before resizing, an image whose resized size is over the pixel budget.

    The file's own size is checked when it is opened; this catches the other bomb: a tiny image of an
    extreme aspect ratio (a 261-byte 60000x1 PNG) whose short side is scaled up to 224, the long side
    with it (13,440,000 x 224 pixels, 9 GB as RGB) only to be cropped away again. The budget here is
    max_pixels or Pillow's limit (about 89 million), whichever is larger: a small max_pixels is meant
    to refuse big files, not every small image that is scaled up to the model's size.
    """
    budgets = [b for b in (Image.MAX_IMAGE_PIXELS, None if max_pixels == PILLOW_LIMIT else max_pixels) if b]
    if not cfg.do_resize or not budgets:
        return
    h, w = resize_shape(im.height, im.width, cfg.size)
    if h * w > max(budgets):
        reason = (f"{im.width}x{im.height} would be resized to {w}x{h} = {w * h} pixels, over the budget of "
                  f"{max(budgets)} (an extreme aspect ratio)")
        raise ImageLoadError(name, reason) if isinstance(name, (str, Path)) else ValueError(reason)


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


# ----------------------------------------------------------------------------- processor


def config_special_ids(path: Path) -> tuple[int, int, int] | None:
    """(bos, eos, pad) from a git_scratch checkpoint's config.json; None where there is none to read."""
    try:
        text = json.loads((path / "config.json").read_text())["text"]
        d = TextConfig()
        return text.get("bos_id", d.bos_id), text.get("eos_id", d.eos_id), text.get("pad_id", d.pad_id)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


class BatchFeature(dict):
    """A dict of model inputs that also reads as attributes (`batch.pixel_values`) and moves with `.to()`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device=None, dtype: torch.dtype | None = None) -> "BatchFeature":
        """Move every tensor to `device`; `dtype` applies to floating tensors only, never the ids."""
        return BatchFeature({k: v.to(device, dtype if v.is_floating_point() else None) if torch.is_tensor(v) else v
                             for k, v in self.items()})


class Processor:
    """Images and prompts -> GIT inputs, with transformers' GitProcessor calling convention.

    max_pixels: decompression-bomb budget for image files (see load_image).
    Prompts are encoded GIT-style, [CLS] + tokens with no [SEP], so generation continues the
    prompt. A list of prompts is right-padded with [PAD] (id 0) and masked: right padding keeps
    each prompt's [CLS] at text position 0, where GIT's position embeddings expect it, so a
    batched generator must start each row after its own `attention_mask.sum(-1)` tokens.
    """

    def __init__(self, image_config: ImageConfig | None = None, tokenizer: Tokenizer | None = None,
                 max_pixels: int | None = PILLOW_LIMIT, source: str = "this processor"):
        self.image_config = image_config or ImageConfig()
        self.tokenizer = tokenizer
        self.max_pixels = max_pixels
        self.source = source

    @classmethod
    def from_pretrained(cls, path, max_pixels: int | None = PILLOW_LIMIT) -> "Processor":
        """Read `preprocessor_config.json` or `processor_config.json` (GIT's defaults, with a warning, when
        neither is there) and the tokenizer
        (`tokenizer.json` or `vocab.txt`; without either, images still work and text raises). Warns when the
        tokenizer's [CLS]/[SEP]/[PAD] ids are not config.json's bos/eos/pad ids."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: not a checkpoint directory")
        cfg = ImageConfig.from_pretrained(path)
        if cfg is None:
            warnings.warn(no_preprocessing_settings(path), stacklevel=2)
        has_tok = (path / "tokenizer.json").exists() or (path / "vocab.txt").exists()
        tok = Tokenizer.from_pretrained(path) if has_tok else None
        ids = config_special_ids(path)
        if tok is not None and ids is not None and (why := special_ids_disagree(tok, *ids, path)):
            warnings.warn(why, stacklevel=2)
        return cls(cfg, tok, max_pixels, str(path))

    def pixel_values(self, images) -> np.ndarray:
        """One image or a list -> (B, 3, H, W) float32 array."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("images is an empty list")
        arrays = []
        for im in images:
            rgb = as_pil(im, self.max_pixels)
            check_resize(rgb, self.image_config, self.max_pixels, im)
            arrays.append(preprocess(rgb, self.image_config))
        if len({a.shape for a in arrays}) > 1:
            raise ValueError("images came out in different sizes (no center crop configured); pass them one at a time")
        return np.stack(arrays)

    def encode_text(self, text) -> tuple[np.ndarray, np.ndarray]:
        """A prompt or a list -> (input_ids, attention_mask), both (B, T) int64, right-padded with pad id."""
        seqs = self._tok().encode_batch([text] if isinstance(text, str) else list(text))
        if not seqs:
            raise ValueError("text is an empty list")
        T = max(len(s) for s in seqs)
        ids = np.full((len(seqs), T), self.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), T), dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = s, 1
        return ids, mask

    def __call__(self, images=None, text=None, return_tensors: str | None = "pt") -> BatchFeature:
        """images: a path, PIL image, HWC uint8 array, or a list of them. text: a prompt or a list.
        Returns pixel_values (B, 3, H, W) float32 and/or input_ids, attention_mask (B, T) int64,
        as torch tensors ("pt") or numpy arrays ("np" / None)."""
        if images is None and text is None:
            raise ValueError("give images, text, or both")
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        out = {}
        if images is not None:
            out["pixel_values"] = self.pixel_values(images)
        if text is not None:
            out["input_ids"], out["attention_mask"] = self.encode_text(text)
        if return_tensors == "pt":
            out = {k: torch.from_numpy(v) for k, v in out.items()}
        return BatchFeature(out)

    def preprocess_frames(self, frames) -> torch.Tensor:
        """A clip's frames (paths, PIL images or arrays; see video.sample_frames) -> (1, F, 3, H, W),
        the layout GIT's video checkpoints take."""
        return torch.from_numpy(self.pixel_values(frames)).unsqueeze(0)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok().decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        return self._tok().batch_decode(ids, skip_special_tokens=skip_special_tokens)

    def _tok(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError(f"{self.source} has no tokenizer (tokenizer.json or vocab.txt); text is unsupported")
        return self.tokenizer
