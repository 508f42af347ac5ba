"""`git-scratch eval`: its parser, and the command as a function of EvalOptions (evaluation/evaluate.py).

Every usage error is one line naming the flag, exit 2, before the checkpoint is loaded; so is a --results
file that may not be written (preflight.py): it is written whole at the end, and only a file an earlier
eval wrote (its first key is "git_scratch", RESULTS_MARK) is ever replaced.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from ..constants import EXIT_OK, EXIT_USAGE
from ..data.shapes import VAL_OFFSET
from ..evaluation.evaluate import EvalOptions, evaluate, prepare
from ..generation.checks import decoding_error, flag, room_error
from ..precision import check_device
from .options import add_model_options, checkpoint_path, open_checkpoint, text_positions
from .preflight import WholeFile, checkpoint_files

# The first bytes of every results file eval writes (json.dumps, indent 1, "git_scratch" its first key):
# how a rerun knows a file it may replace.
RESULTS_MARK = b'{\n "git_scratch": {\n  "command": "eval"'


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `git-scratch eval` on the CLI's subparsers."""
    p = sub.add_parser("eval", help="score a checkpoint: loss, BLEU-4, CIDEr-D, ROUGE-L, VQA accuracy",
                       description="Evaluate a checkpoint on 'shapes' or an annotation file (.jsonl, .csv, COCO "
                                   ".json). Prints the scores as one JSON line.",
                       epilog="examples:\n  git-scratch eval shapes --checkpoint runs/shapes/step-002000\n"
                              "  git-scratch eval val.jsonl --checkpoint ckpt/ft --results val_results.json\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="'shapes', or an annotation file")
    p.add_argument("--images", help="image folder (default: the annotation file's folder)")
    p.add_argument("--results", metavar="FILE.json",
                   help="write the generated captions / answers, COCO style, whole at the end: a new file, or "
                        "one an earlier eval wrote (any other file is refused and left as it was)")
    p.add_argument("--batch-size", type=int, default=16, help="at least 1 (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=20,
                   help="at least 1, at most the model's text positions (default 20)")
    p.add_argument("--num-beams", type=int, default=1, help="at least 1 (default 1: greedy)")
    p.add_argument("--task", default="both", choices=("caption", "vqa", "both"), help="shapes: what to score")
    p.add_argument("--shapes-samples", type=int, default=500)
    p.add_argument("--shapes-offset", type=int, default=VAL_OFFSET,
                   help="shapes: first seed (default: unseen in training)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-cache-check", dest="cache_check", action="store_false",
                   help="skip the first check: cached decoding of a few images equals the uncached rollout")
    add_model_options(p)
    p.set_defaults(run=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    """`git-scratch eval` from its parsed command line: the one place the namespace is read."""
    given = {f.name: getattr(args, f.name) for f in fields(EvalOptions) if f.name != "progress"}
    return eval_command(EvalOptions(**given, progress=not args.no_progress))


def eval_command(opts: EvalOptions) -> int:
    """Score as `git-scratch eval` does: the scores as one JSON line on stdout; the exit code."""
    try:
        results_file = check(opts)
        opened = open_checkpoint(opts)
        if opened.onnx:
            raise ValueError(f"--checkpoint {opts.checkpoint}: eval scores the losses too, which need the torch "
                             "checkpoint (an ONNX export gives only the next token's logits)")
        model, processor = opened.model, opened.processor
        data = prepare(opts, processor)
        scores, results = evaluate(model, data, processor, opts.batch_size, opts.progress,
                                   cache_check=opts.cache_check, max_new_tokens=opts.max_new_tokens,
                                   num_beams=opts.num_beams)
        if results_file:
            mark = {"command": "eval", "checkpoint": str(opened.path.resolve()),
                    "data": opts.data}
            text = json.dumps({"git_scratch": mark, **results}, indent=1) + "\n"
            results_file.write(lambda f: f.write(text.encode("utf-8")))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(scores))
    return EXIT_OK


def check(opts: EvalOptions) -> WholeFile | None:
    """ValueError naming the flag for options that cannot run, before anything is loaded; -> the checked
    --results file, or None."""
    for name, value, least in (("--batch-size", opts.batch_size, 1), ("--shapes-samples", opts.shapes_samples, 1),
                               ("--shapes-offset", opts.shapes_offset, 0)):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    if why := decoding_error(opts.max_new_tokens, opts.num_beams, spell=flag):
        raise ValueError(why)
    check_device(opts.device)
    ckpt = checkpoint_path(opts.checkpoint)
    limit = text_positions(ckpt)  # None where there is no config.json (loading says what is wrong)
    if limit is not None and (why := room_error(1, opts.max_new_tokens, limit, spell=flag)):
        raise ValueError(why)
    if opts.results is None:
        return None
    inputs = checkpoint_files(ckpt) + (() if opts.data == "shapes" else (Path(opts.data),))
    results = WholeFile(opts.results, "--results", is_results_file, inputs)
    results.check()
    return results


def is_results_file(path: Path) -> bool:
    """True for a results file `git-scratch eval` wrote (it starts with RESULTS_MARK)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(RESULTS_MARK)) == RESULTS_MARK
    except OSError:  # unreadable: not known to be ours, so refused
        return False
