"""One PNG a reader understands without the code: the image, then one panel per generated word, the image
under a heat map of where that word looked (explain's maps), the word beneath it. Pillow and numpy only.

A map is drawn at the image's size, each patch a block softened by a Gaussian (smooth), in
a dark-to-bright colour scale, each panel scaled to its own largest value, blended over a greyed copy of
the image so the bright places read as "here". A video's maps (one grid per frame) lie over a film strip of
its frames, side by side.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL = 168  # px: the longer side of every panel's image
COLUMNS = 6  # panels per row
# The colour scale, dark to bright (close to matplotlib's "inferno"): (position 0..1, RGB).
SCALE = [(0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)), (0.75, (249, 142, 9)), (1.0, (252, 255, 164))]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


MISSING = "\uffff"  # a noncharacter: no font has it, so it draws as the font's missing-glyph box


def _drawn(font, text: str) -> bytes | None:
    """The pixels `text` draws as in `font`, on a canvas big enough for one character; None where the font
    refuses it (Pillow's bitmap fallback font takes Latin-1 only)."""
    canvas = Image.new("L", (64, 64))
    try:
        ImageDraw.Draw(canvas).text((0, 0), text, font=font, fill=255)
    except UnicodeEncodeError:
        return None
    return canvas.tobytes()


def label(font, word: dict) -> str:
    """What is written under a word's panel: its token, or "[id N]" where `font` lacks one of its characters
    (Pillow's default font has no accents or CJK: "##リ" would be an empty box)."""
    box = _drawn(font, MISSING)
    drawable = all(_drawn(font, ch) != box for ch in word["token"])
    return word["token"] if drawable else f"[id {word['id']}]"


def colour(values: np.ndarray) -> np.ndarray:
    """Values in 0..1, any shape -> RGB float array (..., 3) along SCALE."""
    at = [p for p, _ in SCALE]
    return np.stack([np.interp(values, at, [c[k] for _, c in SCALE]) for k in range(3)], axis=-1)


def grid_of(word_map) -> np.ndarray:
    """A word's map as one 2-D array: an image's h x w grid, or a video's frames' grids side by side."""
    a = np.asarray(word_map, dtype=np.float64)
    return np.concatenate(list(a), axis=1) if a.ndim == 3 else a


def smooth(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A patch grid (h, w) -> (H, W) = size (W, H) in 0..1: each patch a block, softened by a Gaussian of a
    third of a patch (so no patch edges, and a peak stays as wide as its patch), scaled to its largest value."""
    W, H = size
    a = np.asarray(Image.fromarray(grid.astype(np.float32), mode="F").resize(size, Image.Resampling.NEAREST),
                   dtype=np.float64)
    sigma = max(W / grid.shape[1], H / grid.shape[0]) / 3
    x = np.arange(-int(3 * sigma), int(3 * sigma) + 1)
    k = np.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    k /= k.sum()
    r = len(x) // 2
    a = np.pad(a, r, mode="edge")
    a = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, a)
    a = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, a)
    return (a / max(a.max(), 1e-12)).clip(0, 1)


def overlay(image: Image.Image, word_map) -> Image.Image:
    """`image` (RGB) with the map's heat laid over it: smooth, scaled to the map's largest value."""
    heat = smooth(grid_of(word_map), image.size)
    base = np.asarray(image.convert("L").convert("RGB"), dtype=np.float64)  # grey: the colour is the heat's
    alpha = (0.35 + 0.5 * heat)[..., None]  # brighter heat covers more of the image
    return Image.fromarray((base * (1 - alpha) + colour(heat) * alpha).round().clip(0, 255).astype(np.uint8))


def _wrap(d: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        trial = f"{line} {word}".strip()
        if line and d.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line]


def picture(image: Image.Image, words: list[dict], title: str, legend: str = "") -> Image.Image:
    """The image, then one panel per word of explain's `words` ({"token", "id", "map"}), under `title` (the
    question and answer, or the caption) and a `legend` line (which method made the maps)."""
    image = image.convert("RGB")
    scale = PANEL / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    shown = image.resize(size, Image.Resampling.BICUBIC)
    font, bold, small = _font(15), _font(18), _font(13)
    pad, word_h = 12, 24
    cols = max(1, min(COLUMNS, len(words)))
    rows = -(-len(words) // cols)
    # the image itself: as tall as the panels' rows, between one and two panels
    zoom = min(2.0, max(1.0, (rows * (size[1] + word_h + pad) - word_h - pad) / size[1]))
    big = image.resize((round(size[0] * zoom), round(size[1] * zoom)), Image.Resampling.BICUBIC)
    grid_w = cols * (size[0] + pad)
    width = pad + big.width + 2 * pad + grid_w
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    titles = _wrap(probe, title, bold, width - 2 * pad)
    legends = _wrap(probe, legend, small, width - 2 * pad) if legend else []
    top = pad + 24 * len(titles) + 18 * len(legends) + pad
    height = top + max(big.height + 20, rows * (size[1] + word_h + pad)) + pad
    sheet = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(sheet)
    y = pad
    for line in titles:
        d.text((pad, y), line, fill=(20, 20, 20), font=bold)
        y += 24
    for line in legends:
        d.text((pad, y), line, fill=(100, 100, 100), font=small)
        y += 18
    sheet.paste(big, (pad, top))
    d.text((pad, top + big.height + 2), "the image", fill=(100, 100, 100), font=small)
    x0 = pad + big.width + 2 * pad
    for k, w in enumerate(words):
        x = x0 + (k % cols) * (size[0] + pad)
        yy = top + (k // cols) * (size[1] + word_h + pad)
        sheet.paste(overlay(shown, w["map"]), (x, yy))
        token = label(font, w)
        tw = d.textlength(token, font=font)
        d.text((x + (size[0] - tw) / 2, yy + size[1] + 3), token, fill=(20, 20, 20), font=font)
    return sheet

