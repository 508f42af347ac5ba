"""`git-scratch demo`: the shipped shapes model captions and answers fresh images, with no download.

    seeds ─▶ shapes.sample(seed) ─▶ (image, true caption, true questions and answers)
          ─▶ the demo checkpoint (shapes.CHECKPOINT): one encoding per image, a caption and every answer
          ─▶ records {"seed", "question" (None for the caption), "text", "truth", "n_shapes", "correct"}
          ─▶ a contact sheet PNG, or one JSON line per record (--json), and the exact-match accuracies

`predict` and `score` are what the test of the shipped checkpoint and examples/ use too, so everyone
measures accuracy one way: a caption or an answer counts only if it is exactly the truth.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ..data import shapes

CAPTION_TOKENS = 24  # the longest caption is 16 words, each one token, then [SEP]
ANSWER_TOKENS = 6  # answers are one or two words
FRESH = 2 * 10**9  # default seeds start here: past every training and held-out seed (shapes.VAL_OFFSET = 1e9)


@torch.no_grad()
def predict(model, processor, seeds, batch_size: int = 64) -> list[dict]:
    """For each seed: its caption record, then one record per question, in order."""
    model.eval()
    tok = processor.tokenizer
    records = []
    seeds = list(seeds)
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start: start + batch_size]
        samples = [shapes.sample(s) for s in chunk]
        pixels = torch.from_numpy(processor.pixel_values([im for im, _, _ in samples])).to(model.device)
        image = model.encode_image(pixels)  # (B, N, D): once per image, for the caption and every question
        captions = _texts(model, tok, image, [[tok.cls_id]] * len(chunk), CAPTION_TOKENS)
        rows = [(i, q, a) for i, (_, _, qa) in enumerate(samples) for q, a in qa]
        answers = _texts(model, tok, image[[i for i, _, _ in rows]], [tok.encode(q) for _, q, _ in rows],
                         ANSWER_TOKENS)
        answers_of = {}
        for (i, q, a), text in zip(rows, answers):
            answers_of.setdefault(i, []).append((q, a, text))
        for i, (seed, (_, truth, _)) in enumerate(zip(chunk, samples)):
            n = len(shapes.scene(seed))
            records.append(_record(seed, None, captions[i], truth, n))
            records += [_record(seed, q, text, a, n) for q, a, text in answers_of.get(i, [])]
    return records


def _texts(model, tok, image, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    ids = model.generate(image=image, input_ids=prompts, max_new_tokens=max_new_tokens).tolist()
    width = max(len(p) for p in prompts)  # the prompts come back left-padded to one width
    return [tok.decode(row[width:]).strip() for row in ids]


def _record(seed: int, question: str | None, text: str, truth: str, n_shapes: int) -> dict:
    return {"seed": seed, "question": question, "text": text, "truth": truth, "n_shapes": n_shapes,
            "correct": text == truth}


def score(records: list[dict]) -> dict:
    """Exact-match accuracies: {"captions": share, "answers": share, "n_captions", "n_answers",
    "by_shapes": {n: {"captions", "answers"}}} (shares in 0..1)."""

    def share(rs):
        return sum(r["correct"] for r in rs) / len(rs) if rs else float("nan")

    caps = [r for r in records if r["question"] is None]
    ans = [r for r in records if r["question"] is not None]
    by = {n: {"captions": share([r for r in caps if r["n_shapes"] == n]),
              "answers": share([r for r in ans if r["n_shapes"] == n])}
          for n in sorted({r["n_shapes"] for r in records})}
    return {"captions": share(caps), "answers": share(ans), "n_captions": len(caps), "n_answers": len(ans),
            "by_shapes": by}


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
    truth beside a wrong one)."""
    font, bold = _font(14), _font(16)
    line, side, text_w = 18, shapes.SIZE * SCALE, 720
    by_seed: dict[int, list[dict]] = {}
    for r in records:
        by_seed.setdefault(r["seed"], []).append(r)
    def lines(rs):  # the seed, each record, and the truth of a wrong caption on a line of its own
        return 1 + len(rs) + sum(r["question"] is None and not r["correct"] for r in rs)

    heights = [max(side, line * lines(rs)) + 16 for rs in by_seed.values()]
    sheet = Image.new("RGB", (side + text_w + 24, 44 + sum(heights)), "white")
    d = ImageDraw.Draw(sheet)
    d.text((12, 10), title, fill=BLACK, font=bold)
    y = 40
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


# ----------------------------------------------------------------------------- command line


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `git-scratch demo` on the CLI's subparsers."""
    p = sub.add_parser("demo", help="caption and question fresh shape images with the shipped demo model",
                       description="Draw fresh images of the built-in shapes task, caption them and answer every "
                                   "question about them with the demo model that ships inside the package (no "
                                   "download), and write a contact sheet PNG: each image, what the model said "
                                   "(green: exactly right, red: wrong, with the truth), and the accuracies.",
                       epilog="examples:\n  git-scratch demo                              # 6 fresh images -> "
                              "git-scratch-demo.png\n  git-scratch demo --seed 7 --n 200 --json      # one JSON "
                              "line per caption and per question\n  git-scratch demo -c runs/shapes/latest    "
                              "# another shapes checkpoint\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, help="first seed (default: a random one past every training seed, printed)")
    p.add_argument("--n", type=int, default=6, help="how many images (default 6)")
    p.add_argument("--json", action="store_true", help="print one JSON line per caption and per question, no PNG")
    p.add_argument("--out", default="git-scratch-demo.png", help="the contact sheet (default git-scratch-demo.png)")
    p.add_argument("--checkpoint", "-c", default=str(shapes.CHECKPOINT), help="default: the shipped demo model")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=run_demo)
    return p


def run_demo(args: argparse.Namespace) -> int:
    from ..load import load
    from ..preprocessing.processor import Processor

    if args.n < 1:
        print("git-scratch demo: error: --n must be at least 1", file=sys.stderr)
        return 2
    try:
        model = load(args.checkpoint, device=args.device)
        processor = Processor.from_pretrained(args.checkpoint)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if processor.tokenizer is None:
        print(f"error: {args.checkpoint} has no tokenizer files: the demo needs a shapes checkpoint", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else FRESH + random.randrange(10**9)
    records = predict(model, processor, range(seed, seed + args.n))
    s = score(records)
    summary = (f"captions {s['captions']:.0%} exact ({s['n_captions']}), answers {s['answers']:.0%} exact "
               f"({s['n_answers']}); seeds {seed}..{seed + args.n - 1}")
    if args.json:
        for r in records:
            print(json.dumps({k: r[k] for k in ("seed", "question", "text", "truth", "n_shapes", "correct")}))
        print(summary, file=sys.stderr)
        return 0
    title = f"git-scratch demo ({Path(args.checkpoint).name}): {summary}"
    contact_sheet(records, title).save(args.out)
    for r in records:
        if r["question"] is None:
            mark = "ok   " if r["correct"] else "WRONG"
            print(f"{mark} seed {r['seed']}: {r['text']}" + ("" if r["correct"] else f"   (truth: {r['truth']})"))
    print(f"{summary}\ncontact sheet: {Path(args.out).resolve()}")
    return 0
