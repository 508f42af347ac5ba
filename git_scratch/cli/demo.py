"""`git-scratch demo`: its parser, and the command as a function of DemoOptions (evaluation/demo.py)."""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import fields
from pathlib import Path

from ..constants import EXIT_OK, EXIT_USAGE
from ..data import shapes
from ..evaluation.demo import FRESH, DemoOptions, contact_sheet, predict, prepare, score

EPILOG = """\
examples:
  git-scratch demo                              # 6 fresh images -> git-scratch-demo.png
  git-scratch demo --seed 7 --n 200 --json      # one JSON line per caption and per question
  git-scratch demo -c runs/shapes/latest        # another shapes checkpoint
"""


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `git-scratch demo` on the CLI's subparsers."""
    p = sub.add_parser("demo", help="caption and question fresh shape images with the shipped demo model",
                       description="Draw fresh images of the built-in shapes task, caption them and answer every "
                                   "question about them with the demo model that ships inside the package (no "
                                   "download), and write a contact sheet PNG: each image, what the model said "
                                   "(green: exactly right, red: wrong, with the truth), and the accuracies.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, help="first seed (default: a random one past every training seed, printed)")
    p.add_argument("--n", type=int, default=6, help="how many images (default 6)")
    p.add_argument("--json", action="store_true", help="print one JSON line per caption and per question, no PNG")
    p.add_argument("--out", default="git-scratch-demo.png", help="the contact sheet (default git-scratch-demo.png)")
    p.add_argument("--checkpoint", "-c", default=str(shapes.CHECKPOINT), help="default: the shipped demo model")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=run_demo)
    return p


def run_demo(args: argparse.Namespace) -> int:
    """`git-scratch demo` from its parsed command line: the one place the namespace is read."""
    return demo_command(DemoOptions(**{f.name: getattr(args, f.name) for f in fields(DemoOptions)}))


def demo_command(opts: DemoOptions) -> int:
    """Run the demo as `git-scratch demo` does: a contact sheet (or JSON lines) and the accuracies; the exit code."""
    if opts.n < 1:
        print("git-scratch demo: error: --n must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        model, processor = prepare(opts)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    seed = opts.seed if opts.seed is not None else FRESH + random.randrange(10**9)
    records = predict(model, processor, range(seed, seed + opts.n))
    s = score(records)
    summary = (f"captions {s['captions']:.0%} exact ({s['n_captions']}), answers {s['answers']:.0%} exact "
               f"({s['n_answers']}); seeds {seed}..{seed + opts.n - 1}")
    if opts.json:
        for r in records:
            print(json.dumps({k: r[k] for k in ("seed", "question", "text", "truth", "n_shapes", "correct")}))
        print(summary, file=sys.stderr)
        return EXIT_OK
    title = f"git-scratch demo ({Path(opts.checkpoint).name}): {summary}"
    contact_sheet(records, title).save(opts.out)
    for r in records:
        if r["question"] is None:
            mark = "ok   " if r["correct"] else "WRONG"
            print(f"{mark} seed {r['seed']}: {r['text']}" + ("" if r["correct"] else f"   (truth: {r['truth']})"))
    print(f"{summary}\ncontact sheet: {Path(opts.out).resolve()}")
    return EXIT_OK
