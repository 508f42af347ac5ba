"""Frames for GIT's video checkpoints: pick `n` frames evenly spread over a clip.

A video checkpoint (e.g. git-base-vatex) embeds a fixed number of frames, its config's
`num_image_with_embedding` (6 for the published ones); pass that number as `n`.

Which frames: cut the clip's N frames into n equal segments and take the middle frame of each,

    index_i = floor((2i + 1) * N / (2n)),   i = 0 .. n-1

so the samples are spaced N/n apart and the first and last frames, often fades or black, are
avoided. When the clip has fewer frames than asked (N < n), the same formula repeats frames
(still in time order) rather than failing: the model needs exactly n frames, and a 3-frame GIF
shown as 6 frames is the honest reading of a short clip. Only an empty source is an error.

Sources: a video file (PyAV, `pip install av`), a folder of frame images (natural name order:
frame2 before frame10), a list of image paths (kept in the given order), or a multi-frame image
(animated GIF / WebP, multi-page TIFF). Only the sampled frames are decoded from folders and
lists; video files are decoded once, front to back.

    frames = sample_frames("clip.mp4", 6)                   # 6 RGB PIL images
    pixels = processor.preprocess_frames(frames)            # (1, 6, 3, 224, 224)
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image, ImageOps

from ..constants import IMAGE_EXTS
from .processor import PILLOW_LIMIT, ImageLoadError, as_pil, open_image, printable, to_rgb


def sample_indices(n_total: int, n: int) -> list[int]:
    """n frame indices evenly spread over n_total frames: the middle of each of n equal segments."""
    if n_total < 1:
        raise ValueError("the clip has no frames")
    if n < 1:
        raise ValueError(f"asked for {n} frames")
    return [(2 * i + 1) * n_total // (2 * n) for i in range(n)]


def natural_key(name: str) -> list:
    """Sort key that reads digit runs as numbers: frame2 < frame10."""
    # re.split with a group alternates text, number, text..., so keys compare str with str, int with int.
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", name))]


def frame_files(folder) -> list[Path]:
    """The image files in a folder (hidden files skipped), in natural name order."""
    files = [p for p in Path(folder).iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS]
    return sorted(files, key=lambda p: natural_key(p.name))


def sample_frames(source, n: int, max_pixels: int | None = PILLOW_LIMIT) -> list[Image.Image]:
    """n RGB PIL frames from a video file, a folder of frames, a list of images, or a multi-frame image.

    max_pixels: decompression-bomb budget per image file (see processor.load_image).
    """
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("the list of frames is empty")
        return [as_pil(source[i], max_pixels) for i in sample_indices(len(source), n)]
    path = Path(source)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise ValueError(f"{path}: no frame images ({', '.join(sorted(IMAGE_EXTS))}) in this folder")
        return [folder_frame(files[i], path, max_pixels) for i in sample_indices(len(files), n)]
    if not path.exists():
        raise ImageLoadError(path, "no such file")
    if path.suffix.lower() in IMAGE_EXTS:
        return image_frames(path, n, max_pixels)
    return video_frames(path, n)


def folder_frame(file: Path, folder: Path, max_pixels: int | None) -> Image.Image:
    """One frame of a frame folder; a bad one is named in the reason, since the input is the folder."""
    try:
        return as_pil(file, max_pixels)
    except ImageLoadError as e:
        raise ImageLoadError(folder, f"frame {printable(file.name)}: {e.reason}") from e  # one line, any name


def image_frames(path, n: int, max_pixels: int | None = PILLOW_LIMIT) -> list[Image.Image]:
    """n frames of a multi-frame image (a single-frame image gives n copies of itself)."""
    with open_image(path, max_pixels) as im:
        wanted = sample_indices(getattr(im, "n_frames", 1), n)
        picked = {}
        for i in sorted(set(wanted)):
            im.seek(i)  # GIF frames decode in order, so seek forward only
            picked[i] = to_rgb(ImageOps.exif_transpose(im))
    return [picked[i] for i in wanted]


def video_frames(path, n: int) -> list[Image.Image]:
    """n frames of a video file, decoded with PyAV."""
    try:
        import av  # optional: only video files need it
    except ImportError:
        raise ImportError("reading video files needs PyAV: pip install av") from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ImageLoadError(path, "no video stream")
            stream = container.streams.video[0]
            # Count frames by demuxing (no decoding): the header's frame count is often missing or wrong.
            n_total = sum(1 for pkt in container.demux(stream) if pkt.size)
            if n_total == 0:
                raise ImageLoadError(path, "the video has no frames")
            wanted = sample_indices(n_total, n)
            container.seek(0)
            picked, last = {}, None
            for j, frame in enumerate(container.decode(stream)):
                last = frame
                if j in wanted:
                    picked[j] = frame.to_image()  # RGB PIL image
                if j >= wanted[-1]:
                    break
            if last is None:
                raise ImageLoadError(path, "no frame could be decoded")
            # A decoder that yields fewer frames than there were packets: clamp to its last frame.
            tail = last.to_image() if len(picked) < len(set(wanted)) else None
    except av.FFmpegError as e:
        raise ImageLoadError(path, f"not a video PyAV can read ({e})") from e
    return [picked.get(j, tail) for j in wanted]
