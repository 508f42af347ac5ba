"""The run directory of one training run: checked, created, locked for the run's life, and, on --resume,
the checkpoint it continues from and which of its settings may change (checkpoints.py writes checkpoints).

What a resume starts from (`RunDir`): the newest complete checkpoint whose state.pt and weights load,
scanned from the folders, whatever `latest` says; a warning names what was passed over (an incomplete
folder, an unreadable file, a `latest` naming a missing step). With no complete checkpoint a resume
starts from step 0; when every complete one fails to load, it is refused, naming the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import distributed
from .checkpoints import (LOCK, RUN_FILES, STATE, STEP, RunError, missing_files, short_error, step_dirs,
                          write_pointer)
from ..constants import LATEST


def read_checkpoint(ckpt: Path) -> tuple[dict, dict]:
    """(state, weights on the CPU) of a checkpoint; RunError naming the file that cannot be read."""
    try:
        # our own file (optimizer state, RNG tuples); on the CPU so that a GPU run resumes anywhere
        state = torch.load(ckpt / STATE, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or not {"step", "position", "optimizer", "scheduler", "rng"} <= state.keys():
            raise ValueError("not a training state")
    except Exception as e:  # a cut or damaged pickle fails in many ways (EOFError, RuntimeError, UnpicklingError...)
        raise RunError(f"{ckpt / STATE} cannot be read, truncated or corrupt ({short_error(e)})") from None
    try:
        weights = load_file(ckpt / "model.safetensors")
    except (OSError, SafetensorError) as e:
        raise RunError(f"{ckpt / 'model.safetensors'} cannot be read, truncated or corrupt ({short_error(e)})") from None
    return state, weights


def resume_point(out: Path) -> tuple[Path | None, dict | None, dict | None, list[str]]:
    """(checkpoint, state, weights, notes): the newest complete checkpoint that loads, as the module
    docstring says, and what was passed over to reach it, newest first; (None, None, None, notes) when
    there is no complete one. RunError when complete checkpoints exist but none loads."""
    notes, failed = [], []
    named = _pointer(out)
    if named and STEP.fullmatch(named) and not (out / named).exists():
        notes.append(f"{out / LATEST} names {named}, which is missing")
    for ckpt in reversed(step_dirs(out)):
        if missing_files(ckpt):
            notes.append(f"{ckpt} is incomplete (no {', '.join(missing_files(ckpt))})")
            continue
        try:
            state, weights = read_checkpoint(ckpt)
        except RunError as e:
            notes.append(str(e))
            failed.append(str(e))
            continue
        return ckpt, state, weights, notes
    if failed:
        raise RunError(f"cannot resume {out}: " + "; ".join(failed) + "; no older complete checkpoint to fall back to")
    return None, None, None, notes


def _pointer(out: Path) -> str | None:
    try:
        return (out / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


# ----------------------------------------------------------------------------- what a resume may change

# These define the run: the data it learns from, the model it starts from and what one step computes. A
# resume that changed one would not continue the same run (or could not: another --freeze-vision trains
# other parameters), so it is refused, naming each. Every other setting (--steps, --lr, --min-lr, --warmup,
# --weight-decay, --clip, --bf16, --grad-checkpointing, --save-every, --keep, --log-every, --eval-every,
# --val, --val-samples, --device) is applied from the resumed step on, and said on stderr.
FIXED = ("data", "images", "init", "preset", "config", "overrides", "tokenizer", "task", "shapes_samples",
         "shapes_focus", "shapes_focus_share", "batch_size", "accum", "seed", "compat", "loss", "freeze_vision", "augment")
UNSAID = ("progress",)


def flag(name: str) -> str:
    """A TrainOptions or TrainRun field as `git-scratch train` spells it: --batch-size, DATA."""
    return {"data": "DATA", "overrides": "--set"}.get(name, "--" + name.replace("_", "-"))


def _shown(v) -> str:
    return "on" if v is True else "off" if v is False else "none" if v is None else str(v)


def check_resume(ckpt: Path, state: dict, settings: dict) -> str | None:
    """Compare a run's `settings` (TrainOptions' fields and loop.run_record's) with those `ckpt`'s state
    recorded: RunError listing every FIXED one that differs (old -> new); else the line to say about the
    changed others, or None. A checkpoint keeps what wrote it: settings it did not record (an older
    git-scratch's, or a run trained through `train()` without a record) are not compared."""
    old = {**(state.get("options") or {}), **(state.get("run") or {})}
    changed = [k for k in settings if k in old and old[k] != settings[k] and k not in UNSAID]
    said = {k: f"{flag(k)} {_shown(old[k])} -> {_shown(settings[k])}" for k in changed}
    refused = [said[k] for k in changed if k in FIXED]
    if refused:
        raise RunError(f"--resume: {ckpt} was trained with other settings, which a resume cannot change: "
                       f"{', '.join(refused)}; resume with the same ones, or start a new run from its weights "
                       f"(--init {ckpt} --out ANOTHER_DIR)")
    if changed:
        return f"resuming {ckpt} with changed settings, applied from step {state['step'] + 1} on: " + ", ".join(
            said.values())
    return None


# ----------------------------------------------------------------------------- the run directory


class RunDir:
    """The run directory `out`, opened for one run: checked, created if missing, locked for the run's
    life, and, with `resume`, where the run starts (`start`, `state`, `weights`; None for step 0).

    Refused (RunError, before anything is written): an empty name, a path that is a file or lies below
    one, a place that cannot be written, a directory another run holds the lock of, and, without
    `resume`, a directory that already holds a run (a step folder, `latest`, metrics.jsonl or
    curves.png). close() releases the lock, and removes the lock file and the folders this run created
    when it wrote nothing else.

    Under torchrun rank 0 alone checks, creates and locks the directory and picks the checkpoint; every
    rank reads that checkpoint, and an error is every rank's (rank 0 alone says anything)."""

    def __init__(self, out, resume: bool):
        if str(out) == "":
            raise RunError("--out is empty: name a run directory")
        self.path, self.resume = Path(out), resume
        self.start = self.state = self.weights = None
        self.created: list[Path] = []  # the folders this run made, outermost first
        self._before: set[str] = set()  # what the directory held when opened
        self._lock_file = None
        error = name = None
        if distributed.is_main():
            try:
                self._open()
            except OSError as e:  # a folder on the way that cannot be read, say
                error = f"--out {self.path}: {e.strerror or e}"
            except RunError as e:
                error = str(e)
            if error:
                self.close()
            name = self.start.name if self.start is not None else None
        error, name = distributed.broadcast((error, name))
        if error:
            raise RunError(error)
        if not distributed.is_main() and name is not None:
            self.start = self.path / name
            self.state, self.weights = read_checkpoint(self.start)

    def _open(self) -> None:
        out = self.path
        if out.exists() and not out.is_dir():
            raise RunError(f"--out {out} is a file, not a run directory")
        existing = next(p for p in [out, *out.parents] if p.exists())  # "." or "/" at the latest
        if not existing.is_dir():
            raise RunError(f"--out {out}: {existing} is a file, not a folder")
        self.created = [p for p in reversed([out, *out.parents]) if not p.exists()]
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.created = [p for p in self.created if p.exists()]  # made before the one that failed: removed
            raise RunError(f"--out {out}: cannot create it ({e.strerror or e})") from None
        self._before = {p.name for p in out.iterdir()}
        self._lock()
        if not self.resume:
            held = [p.name for p in step_dirs(out)] + [f for f in RUN_FILES if (out / f).exists()]
            if held:
                listed = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
                raise RunError(f"--out {out} already holds a run ({listed}); continue it with --resume, or choose "
                               "another --out")
            return
        self.start, self.state, self.weights, notes = resume_point(out)
        if self.start is None:
            why = f" ({'; '.join(notes)})" if notes else ""
            print(f"no complete checkpoint in {out}{why}; starting from step 0", file=sys.stderr)
            return
        if notes:
            print(f"warning: {'; '.join(notes)}; resuming from {self.start}, the newest complete checkpoint",
                  file=sys.stderr)
        if _pointer(out) != self.start.name:  # `latest` names what `-c RUN` loads: not a broken or missing folder
            try:
                write_pointer(out, self.start.name)
            except OSError as e:
                raise RunError(f"--out {out}: cannot write {out / LATEST} ({e.strerror or e})") from None

    def _lock(self) -> None:
        path = self.path / LOCK
        try:
            self._lock_file = open(path, "a")
        except OSError as e:
            raise RunError(f"--out {self.path}: cannot write in it ({e.strerror or e})") from None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; runs are not guarded against each other
            return
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"--out {self.path} is in use by another git-scratch train run (it holds {path}); "
                           "wait for it to finish, or choose another --out") from None
        except OSError:  # a file system without locks (some network mounts): go on unguarded
            pass

    def close(self) -> None:
        """Release the lock. What this run added and left empty goes: an empty metrics.jsonl (and the run.json
        beside it), then, when nothing else is new, its lock file and the folders it created."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        try:
            new = {p.name for p in self.path.iterdir()} - self._before if self.path.is_dir() else set()
            metrics = self.path / "metrics.jsonl"
            if "metrics.jsonl" in new and metrics.stat().st_size == 0:
                metrics.unlink()
                new.discard("metrics.jsonl")
                if "run.json" in new:  # the account of a run that logged nothing goes with it
                    (self.path / "run.json").unlink()
                    new.discard("run.json")
            if new - {LOCK}:
                return
            if LOCK in new:  # made by this run: another run's lock file is never new
                (self.path / LOCK).unlink()
            for folder in reversed(self.created):
                folder.rmdir()  # only while empty: an OSError stops here
        except OSError:
            pass
        finally:
            self.created = []


def describe_run(opts: dict, record: dict | None, config: dict, device) -> dict:
    """What run.json says of a run, for a reader: its options, what it started from, the model config, the
    package version, the git commit when run from a checkout, and the machine."""
    import json
    import platform
    import subprocess
    from importlib import metadata

    try:
        version = metadata.version("git_scratch")
    except metadata.PackageNotFoundError:
        version = None
    try:  # the checkout this package runs from, if any (with "+dirty" for uncommitted changes)
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "describe", "--always", "--dirty=+dirty", "--abbrev=40"], cwd=here,
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    machine = {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
               "torch": torch.__version__, "device": str(device)}
    return json.loads(json.dumps({"options": opts, "run": record, "model": config, "git_scratch": version,
                                  "commit": commit, "machine": machine}, default=str))
