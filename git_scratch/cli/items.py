"""The items of a batched run, in and out: `expand` turns paths, folders and globs into `Item`s (and warns of
what a folder held besides images); `Sink` writes one flushed record (or text line) per result, to stdout and
the --output file, and the `error:` lines; `Streamer` prints a caption's words as they come (--stream).
Text output keeps one result per line: a name that would break the line is shown escaped (`processor.printable`).
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..constants import IMAGE_EXTS, VIDEO_EXTS
from ..preprocessing.processor import ImageLoadError, printable
from .results import ResultsFile, resume_key


@dataclass
class Item:
    input: str  # the path as given (folders expand to FOLDER/NAME)
    path: Path | None = None
    error: str | None = None  # set when the argument names nothing usable

    @property
    def key(self) -> str:
        """What results are kept by: the resolved file (the argument itself when it names nothing)."""
        return resume_key(self.path) if self.path is not None else self.input


def expand(args: list[str], folders_are_inputs: bool = False) -> list[Item]:
    """Command-line arguments -> inputs: files as given, folders -> their images, glob patterns -> matches.

    For video, a folder is one input (its files are the frames). A folder's other entries (videos, other
    files, subfolders; not hidden ones) are skipped, with one `warning:` line on stderr per folder counting
    them. Arguments that name nothing become error items, so they are reported with the rest instead of
    stopping the run. Each real file is one input, however many paths lead to it (`./a.jpg` and `a.jpg`,
    symlinks, a symlink loop under `**`).
    """
    out: list[Item] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir() and not folders_are_inputs:
            kinds = {f: kind(f) for f in sorted(path.iterdir()) if not f.name.startswith(".")}
            images = [f for f, k in kinds.items() if k == "image"]
            if note := skipped(arg, Counter(kinds.values())):
                print(f"warning: {note}", file=sys.stderr)
            out += [Item(os.path.join(arg, f.name), f) for f in images]
            if not images:
                out.append(Item(arg, error=f"no image files ({', '.join(sorted(IMAGE_EXTS))}) in this folder"))
        elif path.exists():
            out.append(Item(arg, path))
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            keep = [m for m in matches if folders_are_inputs or Path(m).is_file()]
            out += [Item(m, Path(m)) for m in keep]
            if not keep:
                out.append(Item(arg, error="no file matches this pattern"))
        else:
            out.append(Item(arg, error="no such file or directory"))
    seen: set[str] = set()
    return [i for i in out if not (i.key in seen or seen.add(i.key))]


def kind(entry: Path) -> str:
    """A folder entry as expand sorts it: "image", "video", "subfolder" or "other file"."""
    if entry.is_dir():
        return "subfolder"
    ext = entry.suffix.lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else "other file"


def skipped(folder: str, kinds: Counter) -> str | None:
    """What a folder held besides images, in one line with what to do instead; None when nothing else."""
    nested = printable(os.path.join(folder, "**", "*.jpg"))
    advice = {"video": " (use `git-scratch video`)", "subfolder": f" (not searched: pass '{nested}')", "other file": ""}
    said = [f"{kinds[k]} {k}{'s' if kinds[k] > 1 else ''}{why}" for k, why in advice.items() if kinds[k]]
    if not said:
        return None
    return f"{printable(folder)}: skipped {sum(kinds[k] for k in advice)} that are not images: {', '.join(said)}"


def shorten(question: str, words: int = 8) -> str:
    """A question as an error line shows it: whole if short, else its first words and its length."""
    parts = question.split()
    if len(parts) <= words and len(question) <= 80:
        return repr(question)
    return f"{' '.join(parts[:words])[:80]!r}... ({len(parts)} words)"


def line_start(input: str, question: str | None) -> str:
    """How a text result line starts: "INPUT<TAB>", or "INPUT<TAB>QUESTION<TAB>"; the text follows."""
    return "".join(printable(field) + "\t" for field in (input, question) if field is not None)


def reason(e: Exception, item: Item) -> str:
    """One line: the reason alone (the caller names the input), with the exception type where it helps."""
    if isinstance(e, ImageLoadError):
        return e.reason
    msg = " ".join(str(e).split())
    for prefix in (f"{item.input}: ", f"{item.path}: "):  # messages that already name the file
        msg = msg.removeprefix(prefix)
    return msg if isinstance(e, (ValueError, OSError)) and msg else f"{type(e).__name__}: {msg}"


class Sink:
    """Records go to stdout (text or JSON), errors also to stderr, everything to --output (one flushed line each).

    Every record names its input as given ("input"), the resolved file ("file", the resume key) and the
    settings that made it, so --output can tell this run's results from another's. `hold` (torchrun):
    keep each record, with its line and progress count, for `take`; rank 0 `emit`s every rank's.
    """

    def __init__(self, json: bool, bar, log: ResultsFile | None, settings: dict, hold: bool = False):
        self.json, self.bar, self.log, self.settings, self.n_failed = json, bar, log, settings, 0
        self.held = [] if hold else None  # (record, inputs it settles, line to show)

    def _save(self, rec: dict) -> None:
        rec = {**rec, "settings": self.settings}
        line = json.dumps(rec, ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a name that is not UTF-8 (its bytes held as surrogates): JSON's \udcXX
            line = json.dumps(rec)  # escapes keep the line UTF-8, and json.loads gives the same name back
        if self.log:
            self.log.write(line)  # first: a reader that stops reading stdout loses nothing saved
        if self.json:
            self.bar.write(line, file=sys.stdout)
            sys.stdout.flush()

    def ok(self, item: Item, result: dict, streamed: bool = False) -> None:
        line = None if streamed else line_start(item.input, result["question"]) + result["text"]
        self._put({"input": item.input, "file": item.key, **result}, 1, line)

    def error(self, item: Item, reason: str, questions=(None,), question: str | None = None) -> None:
        """An input that failed: as a whole (unreadable), or for one `question` (e.g. too long a prompt)."""
        about = f" (question {shorten(question)})" if question is not None else ""
        self._put({"input": item.input, "file": item.key, **({"question": question} if question is not None else {}),
                   "error": reason}, len(questions), f"error: {printable(item.input)}{about}: {reason}")

    def _put(self, rec: dict, n: int, line: str | None) -> None:
        if self.held is None:
            self.emit(rec, n, line)
        else:
            self.held.append((rec, n, line))

    def take(self) -> list:
        """The records held since the last take."""
        held, self.held = self.held, []
        return held

    def emit(self, rec: dict, n: int, line: str | None) -> None:
        """Show and save one record: a failure's line goes to stderr before it is saved, a result's text
        to stdout after (unless --json prints the record, or --stream printed the text)."""
        if "error" in rec:
            self.n_failed += 1
            self.bar.write(line, file=sys.stderr)
        self._save(rec)
        if "error" not in rec and line is not None and not self.json:
            self.bar.write(line, file=sys.stdout)
            sys.stdout.flush()
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------- running
class Streamer:
    """Prints one input's text word by word as tokens arrive: "INPUT<TAB>[QUESTION<TAB>]words...".

    WordPiece continues a word with "##" pieces, so a word is printed once the next one has started
    (the text up to its last space); the rest, and the newline, when generation ends.
    """

    def __init__(self, tokenizer, input: str, question: str | None):
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""
        sys.stdout.write(line_start(input, question))
        sys.stdout.flush()

    def add(self, token) -> None:
        self.ids.append(int(token[0]))
        text = self.tokenizer.decode(self.ids)
        cut = text.rfind(" ")
        if cut > len(self.shown) and text.startswith(self.shown):
            self._show(text[:cut])

    def _show(self, text: str) -> None:
        sys.stdout.write(text[len(self.shown) :])
        sys.stdout.flush()
        self.shown = text

    def end(self, text: str) -> None:
        if not text.startswith(self.shown):  # decoding re-joined earlier words: restart the line
            sys.stdout.write("\n")
            self.shown = ""
        self._show(text)
        sys.stdout.write("\n")
        sys.stdout.flush()
