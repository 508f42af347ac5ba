"""Training runs on disk: atomic checkpoints and the `latest` pointer (rundir.py opens, locks and resumes
a run directory).

A run directory holds:

    step-000200/     config.json + model.safetensors (git_scratch.load reads it), tokenizer and
                     preprocessor files, state.pt (optimizer, scheduler, step, RNG states, data position,
                     the run's settings)
    latest           the name of the last complete checkpoint, replaced atomically
    metrics.jsonl    one line of strict JSON per logged step (loop.py), curves.png at the end
    .lock            locked (flock) by the run writing here, for its life: a second run on it is refused

A checkpoint is written to a hidden temporary folder in the run directory, fsynced, renamed into place,
and only then named in `latest`; a run killed mid-save leaves `latest` on the previous good checkpoint,
and the next save clears the leftover folder. A write that fails (a full disk) removes the temporary
folder and leaves every checkpoint as it was.

A checkpoint is *complete* when its folder holds config.json, model.safetensors and state.pt. Only
folders named as this code names them (`step-` and six or more digits) are checkpoints; nothing else
in the directory (a user's `step-0-best/`, notes) is ever read, pruned or replaced. A complete
checkpoint is deleted only by pruning, which keeps the newest `keep` up to the step just saved, so a
checkpoint is removed only once the run has written newer ones. A save replaces a folder of its own
step only when that folder is incomplete or could not be read (a resume fell back past it).

"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from ..constants import LATEST
from ..load import save
from ..model import GIT
from ..preprocessing.processor import Processor

STATE = "state.pt"
LOCK = ".lock"
COMPLETE = ("config.json", "model.safetensors", STATE)  # the files of a complete checkpoint
STEP = re.compile(r"step-(\d{6,})")  # f"step-{step:06d}": the only names this code writes, reads or prunes
RUN_FILES = (LATEST, "metrics.jsonl", "curves.png", "run.json")  # besides the step folders: a run lives here


class RunError(Exception):
    """The run directory cannot be used, or a checkpoint cannot be written or resumed: one line."""


# ----------------------------------------------------------------------------- checkpoints in a run directory


def step_of(path: Path) -> int | None:
    """The step a checkpoint folder's name gives, or None for any other name."""
    m = STEP.fullmatch(path.name)
    return int(m.group(1)) if m else None


def step_dirs(out) -> list[Path]:
    """This run's checkpoint folders, complete or not, oldest first."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted((p for p in out.iterdir() if step_of(p) is not None and p.is_dir()), key=step_of)


def missing_files(ckpt: Path) -> list[str]:
    return [f for f in COMPLETE if not (ckpt / f).is_file()]


def complete_checkpoints(out) -> list[Path]:
    """This run's complete checkpoints, oldest first."""
    return [p for p in step_dirs(out) if not missing_files(p)]


def latest_checkpoint(out) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    done = complete_checkpoints(out)
    return done[-1] if done else None


def short_error(e: BaseException) -> str:
    """An exception as a short one-line reason."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def write_pointer(out: Path, name: str) -> None:
    pointer = out / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    with open(pointer, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(pointer, out / LATEST)
    _fsync_dir(out)


# ----------------------------------------------------------------------------- writing checkpoints


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(path)


def rng_states() -> dict:
    """The global random states (dropout draws from torch's); crops draw from their own (feed.py)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class _Writes:
    """A file that remembers the OSError of a failed write: torch.save reports a full disk only as a
    RuntimeError about file positions, with the errno lost."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _save_state(state: dict, path: Path) -> None:
    with open(path, "wb") as f:
        sink = _Writes(f)
        try:
            torch.save(state, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


def _no_space(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return "os error 28" in str(e) or "No space left" in str(e)  # safetensors' Rust I/O error


def save_checkpoint(out: Path, model: GIT, processor: Processor, state: dict, keep: int) -> Path:
    """Write checkpoint `step-NNNNNN` of `state` (its "step" names it) atomically, as the module docstring
    says, and keep the newest `keep` complete ones. RunError, every checkpoint as it was, when it cannot
    be written (a full disk)."""
    out = Path(out)
    name = f"step-{state['step']:06d}"
    tmp, final = out / f".tmp-{name}", out / name
    for leftover in out.glob(".tmp-step-*"):  # saves that were killed
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        save(model, tmp)
        save_processor(processor, tmp)
        _save_state(state, tmp / STATE)
        _fsync_tree(tmp)
        if final.exists():  # an incomplete or unreadable folder of this step that a resume passed over
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(out)
        write_pointer(out, name)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        (out / f".{LATEST}.tmp").unlink(missing_ok=True)
        if _no_space(e):
            raise RunError(f"no space left on device writing {final}") from None
        raise RunError(f"cannot write {final}: {getattr(e, 'strerror', None) or short_error(e)}") from None
    prune(out, keep, state["step"])
    return final


def prune(out: Path, keep: int, upto: int) -> None:
    """Delete the complete checkpoints of steps up to `upto` but the newest `keep` of them; nothing else."""
    done = [p for p in complete_checkpoints(out) if step_of(p) <= upto]
    for old in done[:-keep]:
        try:
            shutil.rmtree(old)
        except OSError as e:
            raise RunError(f"cannot remove the old checkpoint {old}: {e.strerror or e}") from None


def save_processor(processor: Processor, path: Path) -> None:
    """Tokenizer and preprocessor files, so a checkpoint captions on its own."""
    processor.tokenizer.backend.save(str(path / "tokenizer.json"))
    specials = processor.tokenizer.specials
    (path / "special_tokens_map.json").write_text(json.dumps(
        {k: v for k, v in specials.items() if processor.tokenizer.backend.token_to_id(v) is not None}, indent=2))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "clean_up_tokenization_spaces": processor.tokenizer.clean_up_spaces}, indent=2) + "\n")
    (path / "preprocessor_config.json").write_text(json.dumps(
        {k: v if not isinstance(v, tuple) else list(v) for k, v in asdict(processor.image_config).items()},
        indent=2) + "\n")
