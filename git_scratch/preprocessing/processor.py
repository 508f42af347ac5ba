"""Images and prompts -> GIT inputs: image loading and the Processor; the pixel recipes are in pixels.py.

`compat` (constants.COMPATS) picks whose preprocessing to reproduce:
  * "transformers" (default): the settings in the checkpoint's `preprocessor_config.json`, as Hugging Face's
    CLIPImageProcessor writes them. Pixel values equal transformers' `CLIPImageProcessorPil` built from the same
    file (the tests check every mode Pillow opens and real photographs).
        file / PIL / array -> upright (EXIF) -> RGB (alpha onto white) -> resize shortest edge
        -> center crop -> x * rescale_factor -> (x - mean) / std -> (3, H, W) float32
  * "original": microsoft/GenerativeImage2Text's own code, sized from the checkpoint's `config.json`
    (vision.image_size is the original's test_crop_size): captioning checkpoints resize and crop (offsets
    rounded half to even), VQA ones keep the aspect ratio, trimmed here to whole patches (the original's
    patch convolution drops the rest); CLIP mean and std always; questions cut as its inference cuts them
    (truncation.original_question); a single image given to a video checkpoint comes as one frame, (B, 1, 3, H, W),
    so it gets the first temporal embedding, as in the original.

Loading is the same in both (the original opens files with `.convert("RGB")` and no EXIF transpose,
process_image.py:4-13; we deliberately keep ours under "original" too), with three deliberate differences from
transformers, all about inputs it treats inconsistently:
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
    Processor.from_pretrained("checkpoints/git-base-vqav2", compat="original")  # the original's pixels, questions
"""

from __future__ import annotations

import json
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import GitConfig, TextConfig
from ..constants import PREPROCESSOR_FILES, VIDEO_EXTS, check_compat
from .truncation import original_question
from .pixels import ORIGINAL_MAX_SIZE, ImageConfig, original_pixels, original_resize_shape, preprocess, resize_shape
from .tokenizer import Tokenizer, special_ids_disagree

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


# ----------------------------------------------------------------------------- resize budget


def image_error(name, reason: str) -> ValueError:
    """An ImageLoadError naming the file when the image came from one, else a plain ValueError."""
    return ImageLoadError(name, reason) if isinstance(name, (str, Path)) else ValueError(reason)


def check_resize(im: Image.Image, shape: tuple[int, int] | None, max_pixels: int | None, name=None) -> None:
    """Refuse, before resizing, an image whose resized size `shape` (h, w; None: not resized) is over the
    pixel budget.

    The file's own size is checked when it is opened; this catches the other bomb: a tiny image of an
    extreme aspect ratio (a 261-byte 60000x1 PNG) whose short side is scaled up to 224, the long side
    with it (13,440,000 x 224 pixels, 9 GB as RGB) only to be cropped away again. The budget here is
    max_pixels or Pillow's limit (about 89 million), whichever is larger: a small max_pixels is meant
    to refuse big files, not every small image that is scaled up to the model's size.
    """
    budgets = [b for b in (Image.MAX_IMAGE_PIXELS, None if max_pixels == PILLOW_LIMIT else max_pixels) if b]
    if shape is None or not budgets:
        return
    h, w = shape
    if h * w > max(budgets):
        raise image_error(name, f"{im.width}x{im.height} would be resized to {w}x{h} = {w * h} pixels, over the "
                                f"budget of {max(budgets)} (an extreme aspect ratio)")


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


def original_sizes(path: Path) -> dict:
    """Processor's compat="original" keywords from a checkpoint's config.json: crop_size is vision.image_size
    (the original's test_crop_size), max_size from ORIGINAL_MAX_SIZE (None: crop), patch_size, n_frames."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json, which compat='original' reads the image size from "
                                "(vision.image_size, patch_size, n_frames)")
    cfg = GitConfig.from_json(path / "config.json")
    v = cfg.vision
    return {"crop_size": v.image_size, "max_size": ORIGINAL_MAX_SIZE.get(v.image_size),
            "patch_size": v.patch_size, "n_frames": cfg.n_frames}


class Processor:
    """Images and prompts -> GIT inputs, with transformers' GitProcessor calling convention.

    max_pixels: decompression-bomb budget for image files (see load_image).
    compat: whose preprocessing (module docstring). "transformers" follows `image_config` (GIT's published
    defaults when None). "original" (no image_config) follows the original's code at `crop_size` (224 when
    None): `max_size` set keeps the aspect ratio (its VQA checkpoints), `patch_size` trims those pixels to
    whole patches, `n_frames` (a video checkpoint) makes images one-frame clips in `__call__`.
    Prompts are encoded GIT-style, [CLS] + tokens with no [SEP], so generation continues the
    prompt. A list of prompts is right-padded with [PAD] (id 0) and masked: right padding keeps
    each prompt's [CLS] at text position 0, where GIT's position embeddings expect it, so a
    batched generator must start each row after its own `attention_mask.sum(-1)` tokens.
    """

    def __init__(self, image_config: ImageConfig | None = None, tokenizer: Tokenizer | None = None,
                 max_pixels: int | None = PILLOW_LIMIT, source: str = "this processor", *,
                 compat: str = "transformers", crop_size: int | None = None, max_size: int | None = None,
                 patch_size: int | None = None, n_frames: int | None = None):
        self.compat = check_compat(compat)
        if compat == "transformers" and (crop_size, max_size, patch_size, n_frames) != (None,) * 4:
            raise ValueError("crop_size, max_size, patch_size and n_frames are compat='original' settings; "
                             "compat='transformers' follows image_config")
        if compat == "original" and image_config is not None:
            raise ValueError("compat='original' does not read image_config (preprocessor_config.json); "
                             "give crop_size and max_size")
        # The transformers recipe's settings; None under compat="original", which never reads them.
        self.image_config = None if compat == "original" else image_config or ImageConfig()
        self.crop_size = 224 if crop_size is None else crop_size  # the original's default test_crop_size
        self.max_size, self.patch_size, self.n_frames = max_size, patch_size, n_frames
        self.tokenizer = tokenizer
        self.max_pixels = max_pixels
        self.source = source

    @classmethod
    def from_pretrained(cls, path, max_pixels: int | None = PILLOW_LIMIT, compat: str = "transformers") -> "Processor":
        """Read the image settings and the tokenizer (`tokenizer.json` or `vocab.txt`; without either, images
        still work and text raises). Warns when the tokenizer's [CLS]/[SEP]/[PAD] ids are not config.json's
        bos/eos/pad ids.

        compat="transformers": `preprocessor_config.json` or `processor_config.json` (GIT's defaults, with a
        warning, when neither is there). compat="original": config.json (original_sizes); preprocessor files
        are not read."""
        from ..sources import processor_dir  # sources sits above the preprocessing files: it may convert

        check_compat(compat)
        path = processor_dir(path)  # any name load takes (sources.resolve), or any folder of these files
        has_tok = (path / "tokenizer.json").exists() or (path / "vocab.txt").exists()
        tok = Tokenizer.from_pretrained(path) if has_tok else None
        ids = config_special_ids(path)
        if tok is not None and ids is not None and (why := special_ids_disagree(tok, *ids, path)):
            warnings.warn(why, stacklevel=2)
        if compat == "original":
            return cls(None, tok, max_pixels, str(path), compat=compat, **original_sizes(path))
        cfg = ImageConfig.from_pretrained(path)
        if cfg is None:
            warnings.warn(no_preprocessing_settings(path), stacklevel=2)
        return cls(cfg, tok, max_pixels, str(path))

    def resized_shape(self, h: int, w: int) -> tuple[int, int] | None:
        """(h, w) this processor resizes an h x w image to, before any crop; None: it does not resize."""
        if self.compat == "transformers":
            cfg = self.image_config
            return resize_shape(h, w, cfg.size) if cfg.do_resize else None
        return original_resize_shape(h, w, self.crop_size, self.max_size)

    def check_size(self, im: Image.Image, name=None) -> None:
        """Refuse, without resizing it, an image this processor's resize would blow past the pixel budget
        (check_resize: ImageLoadError naming `name` when it is a path, else ValueError). What datasets
        read for training and evaluation passes through here, so they refuse what `caption` refuses."""
        check_resize(im, self.resized_shape(im.height, im.width), self.max_pixels, name)

    def preprocess_image(self, im: Image.Image, name=None) -> np.ndarray:
        """One upright RGB image -> (3, H, W) float32 by this processor's recipe; `name` (a path) for errors."""
        self.check_size(im, name)
        if self.compat == "transformers":
            return preprocess(im, self.image_config)
        x = original_pixels(im, self.crop_size, self.max_size)  # (3, h, w)
        if self.patch_size:
            # NB: the original's patch convolution (stride = kernel, no padding) never reads the bottom and
            # right rows that do not fill a patch (layers/CLIP/model.py:224); our encoder wants whole patches.
            h, w = (n - n % self.patch_size for n in x.shape[1:])
            if not (h and w):
                raise image_error(name, f"{im.width}x{im.height} is resized to {x.shape[2]}x{x.shape[1]}, "
                                        f"thinner than one {self.patch_size} px patch")
            x = x[:, :h, :w]
        return x

    def pixel_values(self, images) -> np.ndarray:
        """One image or a list -> (B, 3, H, W) float32 array."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("images is an empty list")
        arrays = [self.preprocess_image(as_pil(im, self.max_pixels), im) for im in images]
        if len({a.shape for a in arrays}) > 1:
            why = "no center crop configured" if self.compat == "transformers" else "each keeps its aspect ratio"
            raise ValueError(f"images came out in different sizes ({why}); pass them one at a time")
        return np.stack(arrays)

    def encode_text(self, text) -> tuple[np.ndarray, np.ndarray]:
        """A prompt or a list -> (input_ids, attention_mask), both (B, T) int64, right-padded with pad id.
        compat="original" cuts each as the original's inference does (truncation.original_question)."""
        seqs = self._tok().encode_batch([text] if isinstance(text, str) else list(text))  # each [CLS] + tokens
        if not seqs:
            raise ValueError("text is an empty list")
        if self.compat == "original":
            seqs = [original_question(s[1:], self.tokenizer.cls_id) for s in seqs]
        T = max(len(s) for s in seqs)
        ids = np.full((len(seqs), T), self.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), T), dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = s, 1
        return ids, mask

    def __call__(self, images=None, text=None, return_tensors: str | None = "pt") -> BatchFeature:
        """images: a path, PIL image, HWC uint8 array, or a list of them. text: a prompt or a list.
        Returns pixel_values (B, 3, H, W) float32 and/or input_ids, attention_mask (B, T) int64,
        as torch tensors ("pt") or numpy arrays ("np" / None). compat="original" with a video checkpoint
        (n_frames): pixel_values (B, 1, 3, H, W), each image a one-frame clip, so the model adds the first
        temporal embedding, as the original does to a single image (layers/decoder.py:849)."""
        if images is None and text is None:
            raise ValueError("give images, text, or both")
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        out = {}
        if images is not None:
            out["pixel_values"] = self.pixel_values(images)
            if self.compat == "original" and self.n_frames:
                out["pixel_values"] = out["pixel_values"][:, None]  # (B, 1, 3, H, W)
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
