"""`git-scratch eval`: its parser, and the command as a function of EvalOptions (evaluation/evaluate.py)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from ..constants import EXIT_OK, EXIT_USAGE
from ..data.shapes import VAL_OFFSET
from ..evaluation.evaluate import EvalOptions, evaluate, prepare


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `git-scratch eval` on the CLI's subparsers."""
    p = sub.add_parser("eval", help="score a checkpoint: loss, BLEU-4, CIDEr-D, ROUGE-L, VQA accuracy",
                       description="Evaluate a checkpoint on 'shapes' or an annotation file (.jsonl, .csv, COCO "
                                   ".json). Prints the scores as one JSON line.",
                       epilog="examples:\n  git-scratch eval shapes --checkpoint runs/shapes/step-002000\n"
                              "  git-scratch eval val.jsonl --checkpoint ckpt/ft --results val_results.json\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="'shapes', or an annotation file")
    p.add_argument("--checkpoint", "-c", required=True)
    p.add_argument("--images", help="image folder (default: the annotation file's folder)")
    p.add_argument("--results", metavar="FILE.json", help="write the generated captions / answers, COCO style")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--task", default="both", choices=("caption", "vqa", "both"), help="shapes: what to score")
    p.add_argument("--shapes-samples", type=int, default=500)
    p.add_argument("--shapes-offset", type=int, default=VAL_OFFSET,
                   help="shapes: first seed (default: unseen in training)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    """`git-scratch eval` from its parsed command line: the one place the namespace is read."""
    given = {f.name: getattr(args, f.name) for f in fields(EvalOptions) if f.name != "progress"}
    return eval_command(EvalOptions(**given, progress=not args.no_progress))


def eval_command(opts: EvalOptions) -> int:
    """Score as `git-scratch eval` does: the scores as one JSON line on stdout; the exit code."""
    try:
        model, processor, data = prepare(opts)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    scores, results = evaluate(model, data, processor, opts.batch_size, opts.progress,
                               max_new_tokens=opts.max_new_tokens, num_beams=opts.num_beams)
    if opts.results:
        Path(opts.results).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(scores))
    return EXIT_OK
