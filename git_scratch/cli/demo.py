"""`git-scratch demo`: its parser, and the command as a function of DemoOptions (evaluation/demo.py).

Usage errors are one line naming the flag, exit 2, before the model loads; so is an --out the demo may not
write (preflight.py): the sheet is written whole at the end, and only a PNG the demo wrote (its Software
text, SOFTWARE below) is ever replaced. Records are printed batch by batch as they are computed and only
their counts are kept, so --n has no bound; the sheet draws the first demo.SHEET_IMAGES images.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import fields
from pathlib import Path

from ..constants import EXIT_OK, EXIT_USAGE
from ..evaluation.demo import FRESH, SHEET_IMAGES, DemoOptions, Tally, contact_sheet, predictions
from ..precision import check_device
from .options import add_model_options, checkpoint_path, open_checkpoint
from .preflight import WholeFile, checkpoint_files, has_png_mark, png_mark

SOFTWARE = "git-scratch demo"  # the PNG's Software text (preflight.png_mark): a rerun may replace a file carrying it

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
    p.add_argument("--seed", type=int,
                   help="first seed, 0 or more (default: a random one past every training seed, printed)")
    p.add_argument("--n", type=int, default=6,
                   help=f"how many images (default 6); the sheet shows the first {SHEET_IMAGES}, the accuracies "
                        "count all")
    p.add_argument("--json", action="store_true",
                   help="print one JSON line per caption and per question, as they are computed; no PNG")
    p.add_argument("--out", default="git-scratch-demo.png",
                   help="the contact sheet (default git-scratch-demo.png): a new file, or a sheet the demo wrote "
                        "before (any other file is refused and left as it was)")
    add_model_options(p, default="demo", device="cpu")
    p.set_defaults(run=run_demo)
    return p


def run_demo(args: argparse.Namespace) -> int:
    """`git-scratch demo` from its parsed command line: the one place the namespace is read."""
    return demo_command(DemoOptions(**{f.name: getattr(args, f.name) for f in fields(DemoOptions)}))


def demo_command(opts: DemoOptions) -> int:
    """Run the demo as `git-scratch demo` does: a contact sheet (or JSON lines) and the accuracies; the exit code."""
    try:
        out = check(opts)
        opened = open_checkpoint(opts)
        model, processor = opened.model, opened.processor
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    seed = opts.seed if opts.seed is not None else FRESH + random.randrange(10**9)
    tally, shown = Tally(), []  # shown: the records the sheet draws
    for records in predictions(model, processor, range(seed, seed + opts.n)):
        tally.add(records)
        for r in records:
            if opts.json:
                print(json.dumps({k: r[k] for k in ("seed", "question", "text", "truth", "n_shapes", "correct")}))
            elif r["question"] is None:
                mark = "ok   " if r["correct"] else "WRONG"
                print(f"{mark} seed {r['seed']}: {r['text']}" + ("" if r["correct"] else f"   (truth: {r['truth']})"))
        sys.stdout.flush()  # a batch at a time: a long run shows its progress, and keeps none of it
        if not opts.json:
            shown += [r for r in records if r["seed"] < seed + SHEET_IMAGES]
    s = tally.score()
    summary = (f"captions {s['captions']:.0%} exact ({s['n_captions']}), answers {s['answers']:.0%} exact "
               f"({s['n_answers']}); seeds {seed}..{seed + opts.n - 1}")
    if opts.json:
        print(summary, file=sys.stderr)
        return EXIT_OK
    title = f"git-scratch demo ({Path(opts.checkpoint).name}): {summary}"
    if opts.n > SHEET_IMAGES:
        partial = f"the sheet shows the first {SHEET_IMAGES} of {opts.n} images; the accuracies count all {opts.n}"
        title += "\n" + partial
        print(partial, file=sys.stderr)
    try:
        written = out.write(lambda f: contact_sheet(shown, title).save(f, format="PNG", pnginfo=png_mark(SOFTWARE)))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{summary}\ncontact sheet: {written}")
    return EXIT_OK


def check(opts: DemoOptions) -> WholeFile | None:
    """ValueError naming the flag for options that cannot run, before the model loads; -> the checked --out
    file (None with --json, which writes none)."""
    if opts.n < 1:
        raise ValueError(f"--n must be at least 1, got {opts.n}")
    if opts.seed is not None and opts.seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {opts.seed}")
    check_device(opts.device)
    if opts.json:
        return None
    out = WholeFile(opts.out, "--out", has_png_mark(SOFTWARE), checkpoint_files(checkpoint_path(opts.checkpoint)))
    out.check()
    return out
