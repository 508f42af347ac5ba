"""Shapes: a captioning and VQA task that needs no download, deterministic per seed.

`sample(seed)` draws one to three flat shapes on a light background and returns
`(image, caption, qa)`:

    image    PIL RGB, SIZE x SIZE px
    caption  "a small red circle left of a large blue square"   every shape, left to right
    qa       [("how many shapes are there?", "two"), ("what color is the circle?", "red"), ...]

The caption grammar is one rule, so `parse_caption` inverts it exactly:

    caption := item (" left of " item)*        item := ARTICLE " " SIZE " " COLOR " " KIND   (ARTICLE: a, an)

Shapes never overlap, and their centres are at least MIN_GAP px apart left to right, so the order is
never ambiguous. Sizes and colours are chosen to survive resizing: the small shape spans about two
12-px patches of the shapes-tiny preset, the large one about three, and the six colours differ by at
least ~100 levels in some channel.

`python -m git_scratch.data.shapes` rewrites the task's WordPiece vocabulary (shapes_vocab/).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 96  # image side, px
SIZES = {"small": 20, "large": 34}  # shape side, px
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
KINDS = ("circle", "square", "triangle", "cross")
NUMBERS = ("zero", "one", "two", "three")
MAX_SHAPES = 3
MIN_GAP = 8  # px between shape centres along x: "left of" is always clear
# px of background around the shapes: the training crop (train.py, at least 80% of the area, so a side of
# at least 86 of 96 px) cuts at most 10 px off each axis, so every shape stays whole in every crop.
MARGIN = 10
VAL_OFFSET = 10**9  # first seed of held-out samples (train --val, eval): far past any training set's seeds
NOISE_STD = 6.0  # grey levels of the lightly noisy backgrounds (only the background is noisy)
VOCAB_DIR = Path(__file__).resolve().parent / "shapes_vocab"
# The shipped demo model (`git-scratch demo`): a git_scratch checkpoint of configs/shapes-tiny.json trained on
# this task; how it was made and how well it does: README, "The demo model".
CHECKPOINT = Path(__file__).resolve().parent / "shapes_demo"
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] = 0, as the text config's pad_id


@dataclass(frozen=True)
class Shape:
    size: str  # key of SIZES
    color: str  # key of COLORS
    kind: str  # one of KINDS
    x: int  # left edge, px
    y: int  # top edge, px

    @property
    def side(self) -> int:
        return SIZES[self.size]

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.side / 2, self.y + self.side / 2

    @property
    def words(self) -> str:
        return f"{self.size} {self.color} {self.kind}"


def scene(seed: int) -> list[Shape]:
    """The shapes of sample `seed`, left to right: 1 to 3, non-overlapping, centres MIN_GAP apart in x."""
    rng = random.Random(seed)
    n = rng.randint(1, MAX_SHAPES)
    while True:  # rejection sampling; a few tries at most for 3 shapes on 96 px
        shapes = []
        for _ in range(n):
            size, color, kind = rng.choice(list(SIZES)), rng.choice(list(COLORS)), rng.choice(KINDS)
            s = SIZES[size]
            lo, hi = MARGIN, SIZE - MARGIN - s
            shapes.append(Shape(size, color, kind, rng.randint(lo, hi), rng.randint(lo, hi)))
        if _placed_well(shapes):
            return sorted(shapes, key=lambda sh: sh.centre[0])


def _placed_well(shapes: list[Shape]) -> bool:
    for i, a in enumerate(shapes):
        for b in shapes[i + 1:]:
            if abs(a.centre[0] - b.centre[0]) < MIN_GAP:
                return False
            apart_x = a.x + a.side + 2 <= b.x or b.x + b.side + 2 <= a.x  # 2 px of background between
            apart_y = a.y + a.side + 2 <= b.y or b.y + b.side + 2 <= a.y
            if not (apart_x or apart_y):
                return False
    return True


def draw(shapes: list[Shape], seed: int) -> Image.Image:
    """The image of `shapes`: a light background (plain, or noisy for odd seeds) and flat shapes."""
    rng = np.random.default_rng(seed)
    grey = int(rng.integers(215, 246))
    bg = np.full((SIZE, SIZE, 3), grey, dtype=np.float64)
    if seed % 2:
        bg += rng.normal(0.0, NOISE_STD, bg.shape)
    im = Image.fromarray(bg.round().clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for sh in shapes:
        x0, y0, s, c = sh.x, sh.y, sh.side, COLORS[sh.color]
        x1, y1 = x0 + s - 1, y0 + s - 1  # PIL boxes include their last pixel
        if sh.kind == "circle":
            d.ellipse((x0, y0, x1, y1), fill=c)
        elif sh.kind == "square":
            d.rectangle((x0, y0, x1, y1), fill=c)
        elif sh.kind == "triangle":  # apex up, base along the bottom edge
            d.polygon([(x0 + (s - 1) / 2, y0), (x1, y1), (x0, y1)], fill=c)
        else:  # cross: two bars a third of the side wide
            a, b = s // 3, s - s // 3 - 1
            d.rectangle((x0 + a, y0, x0 + b, y1), fill=c)
            d.rectangle((x0, y0 + a, x1, y0 + b), fill=c)
    return im


def caption(shapes: list[Shape]) -> str:
    return " left of ".join(f"{article(sh.words)} {sh.words}" for sh in shapes)


def parse_caption(text: str) -> list[tuple[str, str, str]]:
    """A caption -> [(size, color, kind), ...] left to right; ValueError if it is not in the grammar."""
    out = []
    for item in text.split(" left of "):
        words = item.split()
        if len(words) != 4 or words[0] != article(words[1]) or words[1] not in SIZES or words[2] not in COLORS \
                or words[3] not in KINDS:
            raise ValueError(f"not a shapes caption: {text!r}")
        out.append((words[1], words[2], words[3]))
    return out


def questions(shapes: list[Shape], seed: int) -> list[tuple[str, str]]:
    """(question, answer) pairs, all true of `shapes`. A shape is named by its kind (or colour) only
    where that name is unique in the image."""
    rng = random.Random(seed + 1)
    qa = [("how many shapes are there?", NUMBERS[len(shapes)])]
    kinds = [sh.kind for sh in shapes]
    colors = [sh.color for sh in shapes]
    for i, sh in enumerate(shapes):
        if kinds.count(sh.kind) == 1:
            qa.append((f"what color is the {sh.kind}?", sh.color))
            qa.append((f"what size is the {sh.kind}?", sh.size))
            left = f"{shapes[i - 1].color} {shapes[i - 1].kind}" if i else "nothing"
            qa.append((f"what is left of the {sh.kind}?", left))
        if colors.count(sh.color) == 1:
            qa.append((f"what shape is {sh.color}?", sh.kind))
    if rng.random() < 0.5:  # half the time ask about a shape that is there, so "yes" is as common as "no"
        color, kind = rng.choice([(sh.color, sh.kind) for sh in shapes])
    else:
        color, kind = rng.choice(list(COLORS)), rng.choice(KINDS)
    present = any(sh.color == color and sh.kind == kind for sh in shapes)
    qa.append((f"is there {article(color)} {color} {kind}?", "yes" if present else "no"))
    return qa


def article(words: str) -> str:
    """"an" before a vowel sound, else "a": "an orange cross", "a small red circle"."""
    return "an" if words[0] in "aeiou" else "a"


def sample(seed: int) -> tuple[Image.Image, str, list[tuple[str, str]]]:
    """(image, caption, qa) of sample `seed`; the same seed always gives the same triple."""
    shapes = scene(seed)
    return draw(shapes, seed), caption(shapes), questions(shapes, seed)


def processor():
    """The task's Processor: its own vocabulary, images at SIZE px with CLIP's normalisation."""
    from ..preprocessing.processor import ImageConfig, Processor
    from ..preprocessing.tokenizer import Tokenizer

    image = ImageConfig(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    return Processor(image, Tokenizer.from_pretrained(VOCAB_DIR), source="the shapes task")


# ----------------------------------------------------------------------------- vocabulary


def vocab_words() -> list[str]:
    """Every word the captions, questions and answers use, in a fixed order."""
    grammar = "a left of how many shapes are there what color size shape is the nothing yes no".split()
    return sorted(set(grammar) | set(SIZES) | set(COLORS) | set(KINDS) | set(NUMBERS))


def vocab_lines() -> list[str]:
    """vocab.txt: specials, punctuation, single letters and their ## continuations (so any lower-case
    word tokenizes without [UNK]), then the task's words whole. Ids are the line numbers."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = list(SPECIALS) + list("?,.'-") + letters + [f"##{c}" for c in letters]
    return pieces + [w for w in vocab_words() if w not in pieces]


def write_vocab(path: Path = VOCAB_DIR) -> Path:
    """Write vocab.txt, tokenizer.json and tokenizer_config.json: uncased BERT WordPiece, as git_scratch's
    Tokenizer loads them. Deterministic: the same files on every run."""
    from ..preprocessing.tokenizer import SPECIAL_DEFAULTS, build_wordpiece

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab_lines()) + "\n", encoding="utf-8")
    config = {"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 64}
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    build_wordpiece(path / "vocab.txt", config, dict(SPECIAL_DEFAULTS)).save(str(path / "tokenizer.json"))
    return path


if __name__ == "__main__":
    print(write_vocab())
