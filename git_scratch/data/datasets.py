"""Image-text datasets read from disk, and the shapes task as one.

Formats (images are paths relative to the annotation file's folder unless `images=` says otherwise):

    JSONL   one object per line: {"image": "a.jpg", "caption": "..."} or {"image", "question", "answer"}
    CSV     a header row with the same column names
    JSON    COCO captions: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}

Every unusable row (bad JSON, missing field, missing image file) and every image that fails to decode
when it is first read is reported once on stderr as `skipped FILE:LINE: reason`, left out, and counted
in `Dataset.skipped`; nothing is dropped silently. COCO rows are named by their index,
`FILE:annotations[i]`, since JSON has no useful line numbers.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..preprocessing.processor import ImageLoadError, as_pil
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
    image cannot be decoded (reported once, added to `skipped`)."""

    records: list[Record]
    skipped: list[Skipped] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Image.Image, str, str] | None:
        r = self.records[i]
        try:
            return as_pil(r.image), r.prompt, r.target
        except (ImageLoadError, OSError, ValueError) as e:
            if r.where not in {s.where for s in self.skipped}:  # once per row, however many epochs
                skip(self.skipped, r.where, f"unreadable image: {e}")
            return None

    def describe(self, i: int) -> tuple[object, str, str]:
        """(image id, prompt, target) of row i, without reading the image."""
        r = self.records[i]
        return (str(r.image) if r.image_id is None else r.image_id), r.prompt, r.target

    def summary(self) -> str:
        return f"{self.source}: {len(self.records)} rows, {len(self.skipped)} skipped"


def skip(skipped: list[Skipped], where: str, reason: str) -> None:
    skipped.append(Skipped(where, reason))
    print(f"skipped {where}: {reason}", file=sys.stderr, flush=True)


def _record(row: dict, root: Path, where: str, skipped: list[Skipped]) -> Record | None:
    """A JSONL/CSV row -> Record, or None (reported) when it lacks a field or its image file."""
    if not isinstance(row, dict):
        skip(skipped, where, "not an object")
        return None
    image = row.get("image")
    if "question" in row or "answer" in row:
        need = ("image", "question", "answer")
    else:
        need = ("image", "caption")
    missing = [k for k in need if not isinstance(row.get(k), str) or not row[k].strip()]
    if missing:
        skip(skipped, where, f"missing or empty {', '.join(missing)}")
        return None
    path = root / image
    if not path.is_file():
        skip(skipped, where, f"no image file {path}")
        return None
    if len(need) == 3:
        return Record(path, row["answer"].strip(), row["question"].strip(), where)
    return Record(path, row["caption"].strip(), "", where)


def read_jsonl(path: Path, root: Path, skipped: list[Skipped]) -> list[Record]:
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                skip(skipped, where, f"not valid JSON ({e.msg})")
                continue
            if (r := _record(row, root, where, skipped)) is not None:
                records.append(r)
    return records


def read_csv(path: Path, root: Path, skipped: list[Skipped]) -> list[Record]:
    records = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "image" not in reader.fieldnames:
            raise ValueError(f"{path}: the header row must name an 'image' column, got {reader.fieldnames}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row or None in row.values():  # more or fewer cells than the header
                skip(skipped, where, f"not {len(reader.fieldnames)} cells, as the header has")
                continue
            if (r := _record(row, root, where, skipped)) is not None:
                records.append(r)
    return records


def read_coco(path: Path, root: Path, skipped: list[Skipped]) -> list[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {im["id"]: im["file_name"] for im in data["images"]}
        annotations = data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a COCO captions file ({e})") from None
    records = []
    for i, a in enumerate(annotations):
        where = f"{path}:annotations[{i}]"
        if not isinstance(a, dict) or a.get("image_id") not in files:
            skip(skipped, where, "image_id not among the file's images")
            continue
        if (r := _record({"image": files[a["image_id"]], "caption": a.get("caption")}, root, where, skipped)):
            r.image_id = a["image_id"]
            records.append(r)
    return records


READERS = {".jsonl": read_jsonl, ".csv": read_csv, ".json": read_coco}


def load_dataset(path, images=None) -> Dataset:
    """An annotation file (.jsonl, .csv, or COCO captions .json) -> Dataset. `images`: the image folder
    (default: the annotation file's folder)."""
    path = Path(path)
    if path.suffix not in READERS:
        raise ValueError(f"{path}: unknown annotation format; use one of {', '.join(READERS)}")
    skipped: list[Skipped] = []
    records = READERS[path.suffix](path, Path(images) if images else path.parent, skipped)
    return Dataset(records, skipped, str(path))


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
