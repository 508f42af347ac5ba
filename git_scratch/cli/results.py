"""`--output FILE.jsonl`: the log a run appends its records to, and the resume point of the next run.

A record is one JSON line that starts `{"input": ` and carries, besides the result, the two things that
make resuming trustworthy:
  * "file": the input's resolved path (symlinks followed), the key a result is found by, so that
    `./photos/a.jpg`, `photos/a.jpg` and `/home/me/photos/a.jpg` are one input;
  * "settings": what changes the output (checkpoint contents, dtype, decoding options). A result made
    with other settings is not this run's result: the run refuses, saying what differs, unless
    `--recompute` asks to compute it again (the old record stays; the new one follows it).

The file is locked while a run writes it (a second run on it refuses), and only a file of these
records is ever appended to: anything else (notes.txt, a photo passed as -o by mistake) is refused and
left byte for byte as it was. A crash can leave a last record cut short; only such a cut record, one
that starts like ours, is dropped before resuming.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..evaluation.records import checkpoint_fingerprint, settings
from ..precision import precision
from .options import RunOptions

RECORD_START = b'{"input": '  # every record's first bytes: json.dumps of a dict whose first key is "input"


class OutputError(Exception):
    """--output cannot be used: one line, exit code 2, the file untouched."""


def resume_key(path: Path) -> str:
    """The resolved file an input names: one key however the path is spelled, symlinks followed."""
    return os.path.realpath(path)


def run_settings(opts: RunOptions) -> dict:
    """The options that change a result (evaluation/records.settings, which the server shares)."""
    sampling = {"temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p, "seed": opts.seed}
    dtype = precision(opts.device, opts.dtype, opts.quantize).dtype  # "auto" as what it means here
    return settings(checkpoint_fingerprint(opts.checkpoint), dtype, opts.max_new_tokens, opts.num_beams,
                    sampling if opts.sample else None, opts.compat, opts.max_length, opts.quantize)


def differences(old: dict, new: dict) -> str:
    """'num_beams 1 there, 4 now; ...' for the settings that differ."""
    if not old:
        return "no settings were recorded with them (an older git-scratch wrote them)"
    said = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            there, now = ("off" if v is None else json.dumps(v) for v in (old.get(k), new.get(k)))
            if k == "checkpoint":
                said.append(f"checkpoint fingerprint {there} there, {now} now (other weights, config or tokenizer)")
            else:
                said.append(f"{k} {there} there, {now} now")
    return "; ".join(said)


def _is_record(rec) -> bool:
    return isinstance(rec, dict) and isinstance(rec.get("input"), str) and ("text" in rec or "error" in rec)


class ResultsFile:
    """An --output file, opened for appending and locked; `records` holds what earlier runs wrote."""

    def __init__(self, path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            kind = "a directory" if self.path.is_dir() else "a special file"
            raise OutputError(f"cannot read --output {self.path}: {kind}, not a regular file")
        self.created = not self.path.exists()
        try:
            self.file = open(self.path, "a+b")  # appending never changes what is there
        except OSError as e:
            raise OutputError(f"cannot write --output {self.path}: {e.strerror or e}") from None
        try:
            self._lock()
            self.records = self._read()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; runs are not guarded against each other
            return
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"--output {self.path} is being written by another git-scratch run; wait for it to "
                              "finish (a rerun then resumes), or choose another file") from None
        except OSError:  # a file system without locks (some network mounts): go on unguarded
            pass

    def _read(self) -> list[dict]:
        """The records already there. Refuses a file that is not ours; drops a cut last record of ours."""
        self.file.seek(0)
        data = self.file.read()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, as a complete log does
        records = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8
                rec = None
            if not _is_record(rec):
                raise OutputError(self._not_ours(f"line {n} is not one of its records"))
            records.append(rec)
        if tail:
            if not tail.startswith(RECORD_START):
                raise OutputError(self._not_ours("its last line is not one of its records"))
            self.file.truncate(len(data) - len(tail))  # a record a crash cut short: computed again
        return records

    def _not_ours(self, why: str) -> str:
        return (f"--output {self.path}: not a git-scratch results file ({why}); it is left as it was: "
                "choose another file")

    def finished(self, settings: dict) -> tuple[set, dict]:
        """(keys (file, question) with a result made with `settings`, {key: other settings} for the rest)."""
        done, other = set(), {}
        for rec in self.records:
            if "error" in rec:
                continue  # failures are tried again
            key = (rec.get("file", rec["input"]), rec.get("question"))
            if rec.get("settings") == settings:
                done.add(key)
            else:
                other[key] = rec.get("settings") or {}
        return done, {k: v for k, v in other.items() if k not in done}

    def write(self, line: str) -> None:
        self.file.write((line + "\n").encode("utf-8"))
        self.file.flush()
        os.fsync(self.file.fileno())  # a finished record survives even a machine crash

    def close(self, drop_if_unused: bool = False) -> None:
        """Close (which releases the lock); a file this run created and never wrote to is removed again."""
        empty = not self.file.closed and os.fstat(self.file.fileno()).st_size == 0
        self.file.close()
        if drop_if_unused and self.created and empty:
            self.path.unlink(missing_ok=True)
