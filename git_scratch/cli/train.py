"""`git-scratch train`: its parser, and the command as a function of a TrainRun and TrainOptions.

    argv ─▶ parser ─▶ run_train: the namespace read once, as TrainRun + TrainOptions (training/loop.py)
         ─▶ train_command: join torchrun's group ─▶ prepare ─▶ train ─▶ an exit code (constants.py)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from ..constants import COMPATS, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ..load import resolve_device
from ..training import distributed
from ..training.checkpoints import latest_checkpoint
from ..training.loop import BF16, LOSSES, TrainOptions, TrainRun, prepare, train

EPILOG = """\
examples:
  git-scratch train shapes --preset shapes-tiny --out runs/shapes --steps 2000
  git-scratch train data/train.jsonl --init ckpt/git-base --out runs/ft --lr 5e-5 --compat original
  git-scratch train shapes --out runs/shapes --resume
  torchrun --nproc_per_node=4 -m git_scratch.cli train shapes --out runs/ddp --batch-size 64

Under torchrun every process trains a share of each batch (DistributedDataParallel; NCCL on CUDA, gloo on CPU);
--batch-size is the global batch, split among the processes, so the same flags train the same
model on any number of them. --out must be on a file system that every process sees.
"""
# The help of TrainOptions' flags that need more than their default (the rest are named by the field).
ABOUT = {"batch_size": "examples per micro-batch, all processes together under torchrun ",
         "compat": "original: the original GIT's loss, label-smoothed (--loss original) ",
         "loss": "default: hf, or original with --compat original"}


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `git-scratch train` on the CLI's subparsers: TrainRun's options, then a flag per TrainOptions field."""
    p = sub.add_parser("train", help="train or fine-tune on image-text pairs (or the built-in shapes task)",
                       description="Train GIT with teacher-forced next-token loss. DATA is 'shapes' (the "
                                   "built-in task, no download), or a .jsonl, .csv or COCO captions .json file.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="'shapes', or an annotation file (.jsonl, .csv, COCO .json)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, metrics.jsonl")
    p.add_argument("--images", help="image folder (default: the annotation file's folder)")
    p.add_argument("--init", metavar="CKPT", help="start from this git_scratch checkpoint (fine-tuning)")
    p.add_argument("--preset", default="shapes-tiny", help="shape to initialise randomly when no --init")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer files, for a random init on your own data")
    p.add_argument("--task", default="both", choices=("caption", "vqa", "both"), help="shapes: what to learn")
    p.add_argument("--shapes-samples", type=int, default=100_000, help="shapes: dataset size")
    p.add_argument("--shapes-focus", default="", metavar="WORDS",
                   help="shapes: ask the questions starting with WORDS more often (with --shapes-focus-share)")
    p.add_argument("--shapes-focus-share", type=float, default=0.0, metavar="P",
                   help="shapes: share of the question examples that ask --shapes-focus where the image has "
                        "one (default: 0, every question of an image equally likely); held-out data never")
    p.add_argument("--val", metavar="DATA", help="held-out data for --eval-every: 'shapes' (unseen seeds) or a file")
    p.add_argument("--val-samples", type=int, default=256, help="shapes: held-out samples")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--device", default="auto")
    for f in fields(TrainOptions):
        if f.name == "progress":  # --no-progress, below
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool" or isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            choices = {"loss": LOSSES, "bf16": BF16, "compat": COMPATS}.get(f.name)
            default = "" if f.default is None else f"(default: {f.default})"
            p.add_argument(flag, type=str if f.default is None else type(f.default), default=f.default,
                           choices=choices, help=f"{ABOUT.get(f.name, '')}{default}".strip())
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    """`git-scratch train` from its parsed command line: the one place the namespace is read."""
    run = TrainRun(**{f.name: getattr(args, f.name) for f in fields(TrainRun)})
    try:
        opts = TrainOptions(**{f.name: getattr(args, f.name) for f in fields(TrainOptions) if f.name != "progress"},
                            progress=not args.no_progress)
    except ValueError as e:  # --steps 0, --compat original with --loss hf
        print(f"git-scratch train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return train_command(run, opts)


def train_command(run: TrainRun, opts: TrainOptions) -> int:
    """Train as `git-scratch train` does; its exit code. Under torchrun every rank runs it, and meets the same
    errors: rank 0 alone says so."""
    device = distributed.init(resolve_device(run.device))  # joins torchrun's process group, if launched by it
    try:
        return _train(run, opts, device)
    finally:
        distributed.teardown()


def _train(run: TrainRun, opts: TrainOptions, device) -> int:
    def error(message: str) -> int:
        if distributed.is_main():
            print(message, file=sys.stderr)
        return EXIT_USAGE

    try:
        model, processor, data, val = prepare(run, device, opts.seed)
    except (ValueError, OSError) as e:
        return error(f"error: {e}")
    try:
        train(model, data, processor, opts, run.out, resume=run.resume, val=val)
    except FileExistsError as e:
        return error(f"error: {e} (--resume)")
    except ValueError as e:  # a batch size the ranks cannot share, data with no readable example
        return error(f"error: {e}")
    except KeyboardInterrupt:
        if distributed.is_main():
            print(f"interrupted; resume with --resume from {latest_checkpoint(Path(run.out))}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK
