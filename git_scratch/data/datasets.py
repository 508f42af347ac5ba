"""Image-text datasets read from disk, and the shapes task as one.

Formats (images are paths relative to the annotation file's folder unless `images=` says otherwise; the suffix
in any case; UTF-8 text, a byte-order mark allowed):

    JSONL   one object per line: {"image": "a.jpg", "caption": "..."} or {"image", "question", "answer"}
    CSV     a header row with the same column names
    JSON    COCO captions: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}

Every unusable row (bad JSON or CSV, a missing or non-text field, a missing image file) and every image that
fails to decode when it is first read is reported once on stderr as `skipped FILE:LINE: reason`, left out, and
counted in `Dataset.skipped`; nothing is dropped silently (load_dataset(report=False), for every rank but one
under torchrun, prints no line for the file's rows and still counts them). COCO rows are named by their index,
`FILE:annotations[i]` (or `FILE:images[i]`), since JSON has no useful line numbers. A file that cannot be read
as a whole (not UTF-8, not a COCO object, missing) is one ValueError or OSError naming it; an empty file, or
one of bad rows only, is a Dataset of length 0 (the commands turn "no data" into an error).

Given the processor that will prepare its images, a Dataset refuses, as unreadable, an image that processor
would refuse: over its pixel budget as a file, or resized past it (a 259-byte 60000x1 PNG scaled to
13,440,000x224), checked before anything is resized. Training and evaluation thus read images as `caption` does.
"""

from __future__ import annotations

import codecs
import csv
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from ..preprocessing.processor import PILLOW_LIMIT, ImageLoadError, Processor, as_pil
from . import shapes


@dataclass
class Record:
    image: Path  # resolved image file
    target: str  # the caption, or the answer
    prompt: str = ""  # the question for VQA; "" for captions
    where: str = ""  # "FILE:LINE" of the row, for messages
    image_id: object = None  # COCO's image id; None: the image path names it


@dataclass
class Skipped:
    where: str
    reason: str


@dataclass
class Dataset:
    """Records of one annotation file. `dataset[i]` -> (RGB image, prompt, target), or None when the
    image cannot be decoded, or `processor` would refuse it (reported once, added to `skipped`)."""

    records: list[Record]
    skipped: list[Skipped] = field(default_factory=list)
    source: str = ""
    processor: Processor | None = field(default=None, repr=False)  # whose image checks to apply

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Image.Image, str, str] | None:
        item, why = self.read(i)
        if why is not None:
            self.note(why)
        return item

    def read(self, i: int) -> tuple[tuple[Image.Image, str, str] | None, Skipped | None]:
        """(row i's item, None), or (None, why it was skipped): what `dataset[i]` gives, with nothing
        recorded or printed; training's worker processes read so, and the loop's process notes the skip."""
        r = self.records[i]
        try:
            image = as_pil(r.image, PILLOW_LIMIT if self.processor is None else self.processor.max_pixels)
            if self.processor is not None:
                self.processor.check_size(image, r.image)  # before anyone resizes it
            return (image, r.prompt, r.target), None
        except (ImageLoadError, OSError, ValueError) as e:
            return None, Skipped(r.where, f"unreadable image: {e}")

    def note(self, why: Skipped) -> None:
        """Count and report a skipped row, once per row however many epochs (reported whatever `report`
        was: under torchrun each rank meets only its own images)."""
        if why.where not in {s.where for s in self.skipped}:
            skip(self.skipped, why.where, why.reason)

    def describe(self, i: int) -> tuple[object, str, str]:
        """(image id, prompt, target) of row i, without reading the image."""
        r = self.records[i]
        return (str(r.image) if r.image_id is None else r.image_id), r.prompt, r.target

    def summary(self) -> str:
        return f"{self.source}: {len(self.records)} rows, {len(self.skipped)} skipped"


def skip(skipped: list[Skipped], where: str, reason: str, report: bool = True) -> None:
    skipped.append(Skipped(where, reason))
    if report:
        print(f"skipped {where}: {reason}", file=sys.stderr, flush=True)


Drop = Callable[[str, str], None]  # drop(where, reason): a row left out, counted (and reported)


def _encodable(text: str) -> bool:
    """False for a string holding a lone surrogate, which JSON's "\\ud800" escape gives: the tokenizer
    refuses it with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _record(row: dict, root: Path, where: str, drop: Drop) -> Record | None:
    """A JSONL/CSV row -> Record, or None (dropped) when it lacks a field or its image file."""
    if not isinstance(row, dict):
        drop(where, "not an object")
        return None
    image = row.get("image")
    if "question" in row or "answer" in row:
        need = ("image", "question", "answer")
    else:
        need = ("image", "caption")
    missing = [k for k in need if not isinstance(row.get(k), str) or not row[k].strip()]
    if missing:
        drop(where, f"missing or empty {', '.join(missing)}")
        return None
    if bad := [k for k in need if not _encodable(row[k])]:
        drop(where, f"{', '.join(bad)} not valid Unicode (a lone surrogate escape)")
        return None
    path = root / image
    try:
        found = path.is_file()
    except OSError as e:  # a name the file system cannot take (too long), not merely absent
        drop(where, f"no usable image file {path} ({e.strerror})")
        return None
    if not found:
        drop(where, f"no image file {path}")
        return None
    if len(need) == 3:
        return Record(path, row["answer"].strip(), row["question"].strip(), where)
    return Record(path, row["caption"].strip(), "", where)


def read_jsonl(path: Path, root: Path, drop: Drop) -> list[Record]:
    records = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the first row
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except ValueError as e:  # JSONDecodeError, or an integer of more than 4300 digits
                drop(where, f"not valid JSON ({getattr(e, 'msg', e)})")
                continue
            except RecursionError:
                drop(where, "not valid JSON (nested too deeply)")
                continue
            if (r := _record(row, root, where, drop)) is not None:
                records.append(r)
    return records


def read_csv(path: Path, root: Path, drop: Drop) -> list[Record]:
    records = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames
        except csv.Error as e:
            raise ValueError(f"{path}: the header row is not valid CSV ({e})") from None
        if header is None:  # an empty file: no rows
            return records
        if "image" not in header:
            raise ValueError(f"{path}: the header row must name an 'image' column, got {header}")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:  # a cell over csv.field_size_limit(); the reader goes on after it
                # NB: DictReader's own line_num is updated only by a row it returns
                drop(f"{path}:{reader.reader.line_num}", f"not valid CSV ({e})")
                continue
            where = f"{path}:{reader.line_num}"
            if None in row or None in row.values():  # more or fewer cells than the header
                drop(where, f"not {len(header)} cells, as the header has")
                continue
            if (r := _record(row, root, where, drop)) is not None:
                records.append(r)
    return records


def _kind(value) -> str:
    """What a parsed JSON value was, in JSON's words."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


def read_coco(path: Path, root: Path, drop: Drop) -> list[Record]:
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():  # an empty file: no rows
        return []
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: not a COCO captions file (not valid JSON: {getattr(e, 'msg', e)})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a COCO captions file (JSON nested too deeply)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a COCO captions file (a JSON {_kind(data)}, not an object with "
                         "'images' and 'annotations')")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            got = "missing" if key not in data else f"a JSON {_kind(data[key])}"
            raise ValueError(f"{path}: not a COCO captions file ('{key}' must be a list, is {got})")
    files = {}
    for i, im in enumerate(data["images"]):
        if not (isinstance(im, dict) and isinstance(im.get("id"), (int, float, str))
                and isinstance(im.get("file_name"), str)):
            drop(f"{path}:images[{i}]", "not an object with an 'id' (number or text) and a 'file_name'")
            continue
        files[im["id"]] = im["file_name"]
    records = []
    for i, a in enumerate(data["annotations"]):
        where = f"{path}:annotations[{i}]"
        if not isinstance(a, dict):
            drop(where, "not an object")
        elif not isinstance(a.get("image_id"), (int, float, str)):  # a list or object is no id (nor hashable)
            drop(where, "no image_id" if "image_id" not in a else
                 f"image_id is a JSON {_kind(a['image_id'])}, not a number or text")
        elif a["image_id"] not in files:
            drop(where, "image_id not among the file's images")
        elif r := _record({"image": files[a["image_id"]], "caption": a.get("caption")}, root, where, drop):
            r.image_id = a["image_id"]
            records.append(r)
    return records


READERS = {".jsonl": read_jsonl, ".csv": read_csv, ".json": read_coco}


def not_utf8(path: Path) -> ValueError:
    """The error for a file that is not UTF-8 text, naming its first bad byte and where it is."""
    decoder, done = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            held = len(decoder.getstate()[0])  # bytes of a character begun in the previous chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:  # e.object is held + chunk
                return ValueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                                  f"{done - held + e.start}); save it as UTF-8")
            if not chunk:
                return ValueError(f"{path}: not UTF-8 text; save it as UTF-8")
            done += len(chunk)


def load_dataset(path, images=None, processor: Processor | None = None, report: bool = True) -> Dataset:
    """An annotation file (.jsonl, .csv, or COCO captions .json; any case) -> Dataset. `images`: the image
    folder (default: the annotation file's folder). `processor`: the one that will prepare the images; the
    Dataset then refuses what it would refuse (module docstring). `report=False`: rows skipped while reading
    the file are counted in `skipped` but not printed (every rank but one under torchrun).
    ValueError or OSError, naming the file, when it cannot be read at all."""
    path = Path(path)
    if path.suffix.lower() not in READERS:
        raise ValueError(f"{path}: unknown annotation format; use one of {', '.join(READERS)}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such annotation file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder, not an annotation file")
    skipped: list[Skipped] = []
    root = Path(images) if images else path.parent
    try:
        records = READERS[path.suffix.lower()](path, root, lambda where, why: skip(skipped, where, why, report))
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    return Dataset(records, skipped, str(path), processor)


@dataclass
class ShapesDataset:
    """The shapes task as a dataset: item i is drawn from seed `offset + i`. task "caption" gives its
    caption; "vqa" one of its questions (picked by the seed); "both" alternates."""

    n: int
    task: str = "caption"
    offset: int = 0
    focus: str = ""  # a question's first words: asked with probability `focus_share` where the image has one
    focus_share: float = 0.0  # of the question examples; 0 = every question of an image equally likely
    skipped: list[Skipped] = field(default_factory=list)  # never any: every sample is drawn
    source: str = "shapes"

    def __post_init__(self):
        if self.task not in ("caption", "vqa", "both"):
            raise ValueError(f"task must be caption, vqa or both, got {self.task!r}")
        if not 0 <= self.focus_share <= 1 or (self.focus_share and not self.focus):
            raise ValueError(f"focus_share must be in [0, 1], with a focus question; got {self.focus_share}, "
                             f"{self.focus!r}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Image.Image, str, str]:
        image, caption, qa = shapes.sample(self.offset + i)
        return (image, *self._text(i, caption, qa))

    def read(self, i: int) -> tuple[tuple[Image.Image, str, str], None]:
        """(item i, None): as Dataset.read, for a dataset that never skips."""
        return self[i], None

    def describe(self, i: int) -> tuple[object, str, str]:
        """(seed, prompt, target) of item i."""
        seed = self.offset + i
        shown = shapes.scene(seed)
        return (seed, *self._text(i, shapes.caption(shown), shapes.questions(shown, seed)))

    def _text(self, i: int, caption: str, qa: list) -> tuple[str, str]:
        if self.task == "caption" or (self.task == "both" and i % 2 == 0):
            return "", caption
        # NB: drawn from a hash of the seed, not indexed by it: with "both" only odd i ask, and an index
        # (offset + i) % len(qa) would then never reach the even places of an even-length list (for one
        # shape, "how many shapes" and "what size" would never be asked).
        rng = random.Random(f"question {self.offset + i}")
        if self.focus_share and rng.random() < self.focus_share:  # a curriculum: more of one kind of question
            qa = [x for x in qa if x[0].startswith(self.focus)] or qa
        return qa[rng.randrange(len(qa))]

    def summary(self) -> str:
        focus = f", {self.focus_share:.0%} of questions '{self.focus} ...'" if self.focus_share else ""
        return f"shapes ({self.task}): {self.n} samples from seed {self.offset}{focus}"
