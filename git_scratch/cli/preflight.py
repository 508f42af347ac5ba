"""What `eval` and `demo` check before they load or compute anything, and how they write their one file.

    --device           one this torch can run on: auto, cpu, cuda or cuda:N (with such a GPU), mps (Apple)
    --results / --out  the file written whole at the end (eval's results JSON, demo's contact sheet PNG)

The file is refused, before any compute and with one line, where it is a folder, lies below a file or
in a missing or unwritable folder, is one of the run's inputs (the annotation file, a checkpoint file),
or exists and was not written by git-scratch: such a file is left byte for byte as it was. What
git-scratch writes carries a mark (`ours` recognises it), so a rerun may replace its own earlier file.
The file is written beside its place and renamed over it: a crash never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from PIL import Image, PngImagePlugin

from ..constants import PREPROCESSOR_FILES, TOKENIZER_FILES
from ..load import umask_mode

def png_mark(software: str) -> PngImagePlugin.PngInfo:
    """A PNG's text chunk Software = `software` ("git-scratch demo", "git-scratch explain"): the mark by which a
    rerun knows a picture that command wrote, and may replace."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", software)
    return info


def has_png_mark(software: str) -> Callable[[Path], bool]:
    """`ours` for WholeFile: True for a PNG carrying png_mark(software)."""
    def ours(path) -> bool:
        try:
            with Image.open(path) as im:
                return im.format == "PNG" and im.info.get("Software") == software
        except Exception:  # anything Pillow cannot open (or calls a bomb) is not ours
            return False

    return ours


def checkpoint_files(checkpoint) -> tuple[Path, ...]:
    """The files a run reads from the checkpoint folder `checkpoint` (options.checkpoint_path resolves a name)."""
    ckpt = Path(checkpoint)
    return tuple(ckpt / name for name in ("config.json", "model.safetensors", *PREPROCESSOR_FILES, *TOKENIZER_FILES))


@dataclass
class WholeFile:
    """A file a command writes whole at its end: `check()` before any compute, `write(...)` at the end."""

    path: str  # as given
    flag: str  # "--results", "--out": what the messages name
    ours: Callable[[Path], bool]  # True for an existing file git-scratch wrote (which may be replaced)
    inputs: tuple = ()  # files the run reads: never written, whatever they hold

    def check(self) -> Path:
        """The file to write (symlinks followed: a link stays, the file it names is replaced); ValueError,
        one line naming the flag and the file, where it must not or cannot be written."""
        said = f"{self.flag} {self.path}"
        if not str(self.path).strip():
            raise ValueError(f"{self.flag} is empty: name a file")
        target = Path(os.path.realpath(self.path))
        if target.is_dir():
            raise ValueError(f"{said}: a folder; name a file")
        if not target.parent.exists():
            raise ValueError(f"{said}: no folder {target.parent}")
        if not target.parent.is_dir():
            raise ValueError(f"{said}: {target.parent} is a file, not a folder")
        if target.exists():
            for given in self.inputs:
                if os.path.exists(given) and os.path.samefile(target, given):
                    alias = "" if os.path.abspath(given) == os.path.abspath(self.path) else f" (it is {given})"
                    raise ValueError(f"{said}: one of this run's inputs{alias}; it is left as it was: choose "
                                     "another file")
            if not target.is_file():
                raise ValueError(f"{said}: a special file, not a regular file")
            if not self.ours(target):
                raise ValueError(f"{said}: not a file git-scratch wrote; it is left as it was: choose another "
                                 "file, or remove it first")
        try:  # a place we cannot write (read-only disk, no permission) is said now, not after the compute
            fd, probe = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ValueError(f"{said}: cannot write in {target.parent}: {e.strerror or e}") from None
        return target

    def write(self, write: Callable[[BinaryIO], None]) -> Path:
        """write(f) into a temporary file beside the target, then rename it over the target; checked again
        first (a file may have appeared there meanwhile). -> the file written. ValueError, one line naming
        the flag, where it cannot be written (a full disk): the file that was there is left whole."""
        target, tmp = self.check(), None
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())  # the rename below must never publish a file whose bytes are not on disk
            os.chmod(tmp, umask_mode())  # mkstemp makes 0600; an ordinary file otherwise
            os.replace(tmp, target)
        except BaseException as e:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise ValueError(f"{self.flag} {self.path}: cannot write it: {e.strerror or e}") from None
            raise
        return target
