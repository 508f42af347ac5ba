"""Training runs on disk: atomic checkpoints, the `latest` pointer, and everything a resume needs.

A run directory holds:

    step-000200/     config.json + model.safetensors (git_scratch.load reads it), tokenizer and
                     preprocessor files, state.pt (optimizer, scheduler, step, RNG states, data position)
    latest           the name of the last complete checkpoint, replaced atomically
    metrics.jsonl    one line per logged step (train.py), curves.png at the end

A checkpoint is written to a hidden temporary folder in the run directory, fsynced, renamed into place,
and only then named in `latest`; a run killed mid-save leaves `latest` on the previous good checkpoint,
and the next save clears the leftover folder.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..load import save
from ..model import GIT
from ..preprocessing.processor import Processor

LATEST = "latest"
STATE = "state.pt"


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


def rng_states(g: torch.Generator) -> dict:
    return {"augment": g.get_state(), "torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict, g: torch.Generator) -> None:
    g.set_state(states["augment"])
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(out: Path, model: GIT, processor: Processor, state: dict, keep: int) -> Path:
    """Write checkpoint `step-NNNNNN` of `state` (its "step" names it) atomically, as the module docstring
    says, and keep the newest `keep`."""
    name = f"step-{state['step']:06d}"
    tmp = out / f".tmp-{name}"
    for leftover in out.glob(".tmp-step-*"):  # saves that were killed
        shutil.rmtree(leftover, ignore_errors=True)
    save(model, tmp)
    save_processor(processor, tmp)
    torch.save(state, tmp / STATE)
    _fsync_tree(tmp)
    final = out / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(out)
    pointer = out / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    with open(pointer, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(pointer, out / LATEST)
    _fsync_dir(out)
    for old in sorted(out.glob("step-*"))[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The last complete checkpoint of a run directory, or None."""
    pointer = out / LATEST
    if not pointer.is_file():
        return None
    path = out / pointer.read_text().strip()
    return path if (path / STATE).is_file() else None


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
