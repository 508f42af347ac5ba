"""Hugging Face GIT folders converted once: <cache>/converted/<digest>/, keyed by the content of what conversion reads.

    <cache>       $GIT_SCRATCH_CACHE, else $XDG_CACHE_HOME/git_scratch, else ~/.cache/git_scratch
    converted/    one git_scratch checkpoint per source content, written to a temporary sibling and renamed into place
    digests/      sha256 of each source file, filed under its (device, inode, size, mtime, ctime): the fast key

The digest is content, so a folder copied elsewhere, or the same weights fetched from the hub, finds the same
conversion, and a changed file converts again. Hashing gigabytes on every load would cost more than the load, so a
file's sha256 is computed once and found again by its stat fields: a write changes mtime and ctime, and ctime
cannot be set back by hand, so a changed file never meets a stale digest (a file edited in place within the
same nanosecond tick, its size kept, is the one gap). A second load stats a few files and reads a few lines.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from fnmatch import fnmatch
from pathlib import Path

from ..convert.convert import hf_to_ours_dir, write_converted
from ..convert.hub import NEEDED

FORMAT = 1  # bump when the converter writes something else from the same files: older conversions are then unused
CHUNK = 1 << 24  # 16 MiB reads while hashing


def cache_root() -> Path:
    if os.environ.get("GIT_SCRATCH_CACHE"):
        return Path(os.environ["GIT_SCRATCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "git_scratch"


def file_digest(path: Path, digests: Path) -> str:
    """sha256 of one file, read through once and then remembered under its stat fields (module docstring)."""
    st = path.stat()  # follows a hub snapshot's symlink to its blob
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    memo = digests / hashlib.sha256(key.encode()).hexdigest()
    if memo.is_file():
        return memo.read_text()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    digests.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
    tmp.write_text(h.hexdigest())
    os.replace(tmp, memo)  # atomic: a reader sees the whole digest or none
    return h.hexdigest()


def source_digest(src: Path, root: Path) -> str:
    """sha256 over the names and contents of the files in `src` a conversion may read (hub.NEEDED)."""
    names = sorted(p.name for p in src.iterdir() if p.is_file() and any(fnmatch(p.name, pat) for pat in NEEDED))
    h = hashlib.sha256(f"git_scratch conversion {FORMAT}\n".encode())
    for name in names:
        h.update(f"{name} {file_digest(src / name, root / 'digests')}\n".encode())
    return h.hexdigest()


def converted(src: Path) -> Path:
    """The git_scratch checkpoint converted from Hugging Face GIT folder `src`: from the cache, or converted now
    by the converter (its strict checks; its warnings through warnings.warn) and kept. `src` is only read."""
    root = cache_root()
    try:
        dst = root / "converted" / source_digest(src, root)
        if dst.is_dir():  # renamed into place whole, so present means complete
            return dst
        said = convert_into(src, dst)
    except OSError as e:  # a source file that cannot be read, a cache that cannot be written
        why = f"{e.filename}: {e.strerror}" if e.filename else str(e)
        raise ValueError(f"cannot convert {src} into the cache {root} ({why}); GIT_SCRATCH_CACHE names another "
                         "cache folder") from None
    for warning in said:
        warnings.warn(warning, stacklevel=4)  # attributed to resolve's caller: converted <- folder <- resolve
    return dst


def convert_into(src: Path, dst: Path) -> list[str]:
    """Convert `src` into a temporary sibling of `dst` and rename it into place; the converter's warnings."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        summary = write_converted(hf_to_ours_dir(src, None, trust_pickle=False), src, tmp / "ckpt", overwrite=False)
        try:
            (tmp / "ckpt").rename(dst)
        except OSError:
            if not dst.is_dir():
                raise
            # another process converted the same files first: theirs is the same checkpoint
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary["warnings"]
