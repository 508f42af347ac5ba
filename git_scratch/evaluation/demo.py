"""`git-scratch demo`: the shipped shapes model captions and answers fresh images, with no download.

    seeds ─▶ shapes.sample(seed) ─▶ (image, true caption, true questions and answers)
          ─▶ the demo checkpoint (shapes.CHECKPOINT): one encoding per image, a caption and every answer
          ─▶ records {"seed", "question" (None for the caption), "text", "truth", "n_shapes", "correct"}
          ─▶ a contact sheet PNG, or one JSON line per record (--json), and the exact-match accuracies

`predict` and `score` are what the test of the shipped checkpoint and examples/ use too, so everyone
measures accuracy one way: a caption or an answer counts only if it is exactly the truth. A long run
streams: `predictions` yields each batch's records, `Tally` keeps only counts of them, and the contact
sheet draws at most SHEET_IMAGES images (a taller PNG is one Pillow refuses to open).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageFont

from ..data import shapes
from .evaluate import generated_texts

CAPTION_TOKENS = 24  # the longest caption is 16 words, each one token, then [SEP]
ANSWER_TOKENS = 6  # answers are one or two words
FRESH = 2 * 10**9  # default seeds start here: past every training and held-out seed (shapes.VAL_OFFSET = 1e9)
SHEET_IMAGES = 100  # the most images a contact sheet draws: about 23,000 px tall; the accuracies count every one


@dataclass
class DemoOptions:
    """What `git-scratch demo` shows (cli/demo.py): `n` fresh shapes images from `seed` on, captioned and
    questioned by `checkpoint`, as a contact sheet at `out` or as JSON lines."""

    seed: int | None = None  # the first seed; None: FRESH + a random offset, past every training seed
    n: int = 6  # how many images
    json: bool = False  # one JSON line per caption and per question instead of the contact sheet
    out: str = "git-scratch-demo.png"  # the contact sheet
    checkpoint: str = "demo"  # the shipped demo model (sources.resolve names it so)
    device: str = "cpu"
    dtype: str = "float32"  # as load takes it; with quantize, the vision encoder's alone
    quantize: str | None = None  # "int8": the decoder and LM head in int8 (quantize.py)


def predict(model, processor, seeds, batch_size: int = 64) -> list[dict]:
    """For each seed: its caption record, then one record per question, in order."""
    return [r for records in predictions(model, processor, seeds, batch_size) for r in records]


@torch.no_grad()
def predictions(model, processor, seeds, batch_size: int = 64):
    """predict's records, one list per batch of `batch_size` seeds, as each batch is done."""
    model.eval()
    tok = processor.tokenizer
    seeds = list(seeds)
    for start in range(0, len(seeds), batch_size):
        records = []
        chunk = seeds[start: start + batch_size]
        samples = [shapes.sample(s) for s in chunk]
        pixels = torch.from_numpy(processor.pixel_values([im for im, _, _ in samples])).to(model.device)
        image = model.encode_image(pixels)  # (B, N, D): once per image, for the caption and every question
        captions = generated_texts(model, tok, image, [[tok.cls_id]] * len(chunk), max_new_tokens=CAPTION_TOKENS)
        rows = [(i, q, a) for i, (_, _, qa) in enumerate(samples) for q, a in qa]  # image-major
        asked = Counter(i for i, _, _ in rows)  # image -> its number of questions, in the rows' order
        answers = generated_texts(model, tok, image[list(asked)], [tok.encode(q) for _, q, _ in rows],
                                  prompts_per_image=list(asked.values()), max_new_tokens=ANSWER_TOKENS)
        answers_of = {}
        for (i, q, a), text in zip(rows, answers):
            answers_of.setdefault(i, []).append((q, a, text))
        for i, (seed, (_, truth, _)) in enumerate(zip(chunk, samples)):
            n = len(shapes.scene(seed))
            records.append(_record(seed, None, captions[i], truth, n))
            records += [_record(seed, q, text, a, n) for q, a, text in answers_of.get(i, [])]
        yield records


def _record(seed: int, question: str | None, text: str, truth: str, n_shapes: int) -> dict:
    return {"seed": seed, "question": question, "text": text, "truth": truth, "n_shapes": n_shapes,
            "correct": text == truth}


def score(records: list[dict]) -> dict:
    """Exact-match accuracies: {"captions": share, "answers": share, "n_captions", "n_answers",
    "by_shapes": {n: {"captions", "answers"}}} (shares in 0..1)."""
    tally = Tally()
    tally.add(records)
    return tally.score()


class Tally:
    """The counts `score` needs, added batch by batch: a long run keeps no records to score them."""

    def __init__(self):
        self.seen, self.right = Counter(), Counter()  # (kind, n_shapes) -> records, exactly right ones

    def add(self, records: list[dict]) -> None:
        for r in records:
            key = ("captions" if r["question"] is None else "answers", r["n_shapes"])
            self.seen[key] += 1
            self.right[key] += r["correct"]

    def score(self) -> dict:
        """score() of every record added."""

        def share(keys):
            seen = sum(self.seen[k] for k in keys)
            return sum(self.right[k] for k in keys) / seen if seen else float("nan")

        kinds = {kind: [k for k in self.seen if k[0] == kind] for kind in ("captions", "answers")}
        by = {n: {kind: share([(kind, n)]) for kind in kinds}
              for n in sorted({n for _, n in self.seen})}
        return {"captions": share(kinds["captions"]), "answers": share(kinds["answers"]),
                "n_captions": sum(self.seen[k] for k in kinds["captions"]),
                "n_answers": sum(self.seen[k] for k in kinds["answers"]), "by_shapes": by}


# ----------------------------------------------------------------------------- the contact sheet

SCALE = 2  # the 96 px images are drawn at 192 px
GREEN, RED, GREY, BLACK = (20, 120, 40), (190, 30, 30), (110, 110, 110), (20, 20, 20)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()



def contact_sheet(records: list[dict], title: str) -> Image.Image:
    """One row per image: the image, its generated caption and answers (green exact, red wrong, with the
    truth beside a wrong one). `title`: one line or several."""
    font, bold = _font(14), _font(16)
    line, side, text_w = 18, shapes.SIZE * SCALE, 720
    by_seed: dict[int, list[dict]] = {}
    for r in records:
        by_seed.setdefault(r["seed"], []).append(r)
    def lines(rs):  # the seed, each record, and the truth of a wrong caption on a line of its own
        return 1 + len(rs) + sum(r["question"] is None and not r["correct"] for r in rs)

    heights = [max(side, line * lines(rs)) + 16 for rs in by_seed.values()]
    titles = title.split("\n")
    y = 40 + 20 * (len(titles) - 1)  # below the title
    sheet = Image.new("RGB", (side + text_w + 24, y + 4 + sum(heights)), "white")
    d = ImageDraw.Draw(sheet)
    for i, text in enumerate(titles):
        d.text((12, 10 + 20 * i), text, fill=BLACK, font=bold)
    for (seed, rs), h in zip(by_seed.items(), heights):
        image, _, _ = shapes.sample(seed)
        sheet.paste(image.resize((side, side), Image.Resampling.NEAREST), (12, y))
        x, ty = side + 24, y
        d.text((x, ty), f"seed {seed}", fill=GREY, font=font)
        for r in rs:
            ty += line
            if r["question"] is None:
                d.text((x, ty), r["text"], fill=GREEN if r["correct"] else RED, font=font)
                if not r["correct"]:
                    ty += line
                    d.text((x, ty), f"truth: {r['truth']}", fill=GREY, font=font)
                continue
            said = f"{r['question']}  {r['text']}"
            d.text((x, ty), said, fill=GREEN if r["correct"] else RED, font=font)
            if not r["correct"]:
                d.text((x + d.textlength(said, font=font) + 10, ty), f"(truth: {r['truth']})", fill=GREY, font=font)
        y += h
    return sheet
