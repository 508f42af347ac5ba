"""`git-scratch train`: its parser, and the command as a function of a TrainRun and TrainOptions.

    argv ─▶ parser ─▶ run_train: the namespace read once, as TrainRun + TrainOptions (training/loop.py),
         every value checked ─▶ train_command: --device checked ─▶ join torchrun's group ─▶ open --out
         (rundir.RunDir: checked, locked, the checkpoint to resume, its settings compared)
         ─▶ prepare ─▶ train ─▶ an exit code (constants.py)

Every failure is one `error:` line and an exit code, as EPILOG lists them, found before the model is
built where it can be. Under torchrun every rank meets the same errors and rank 0 alone says them.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, fields

from ..constants import COMPATS, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from ..training import distributed
from ..training.checkpoints import RunError, latest_checkpoint
from ..training.rundir import RunDir, check_resume
from ..training.feed import default_workers
from ..training.loop import BF16, LOSSES, Diverged, TrainOptions, TrainRun, prepare, run_record, train
from ..precision import check_device
from .stops import stopped_code, stopped_name

EPILOG = """\
examples:
  git-scratch train shapes --preset shapes-tiny --out runs/shapes --steps 2000
  git-scratch train data/train.jsonl --init ckpt/git-base --out runs/ft --lr 5e-5 --compat original
  git-scratch train shapes --out runs/shapes --resume
  torchrun --nproc_per_node=4 -m git_scratch.cli train shapes --out runs/ddp --batch-size 64

Under torchrun every process trains a share of each batch (DistributedDataParallel; NCCL on CUDA, gloo on CPU);
--batch-size is the global batch, split among the processes, so the same flags train the same
model on any number of them. --out must be on a file system that every process sees.

--out: a new run needs a directory that holds no run yet (created if missing); one run at a time writes
it (a lock). A checkpoint, step-NNNNNN/, is complete once it holds config.json, model.safetensors and
state.pt; --keep counts complete checkpoints, and nothing else in --out is ever removed.

--resume continues from the newest complete checkpoint in --out whose files load, whatever `latest`
names; a warning names each newer folder passed over (incomplete, truncated, corrupt). With no complete
checkpoint it starts from step 0, and says so; when none loads it stops, naming the files. The settings
that define the run must stay as they were: DATA, --images, --init, --preset, --tokenizer, --task,
--shapes-*, --batch-size, --accum, --seed, --compat, --loss, --freeze-vision, --augment (another value is
refused, listing each as old -> new). The others (--steps, --lr, --min-lr, --warmup, --weight-decay,
--clip, --bf16, --grad-checkpointing, --save-every, --keep, --log-every, --eval-every, --val, --device)
apply from the resumed step on, and are listed on stderr.

exit codes:
  0    trained to --steps
  1    training diverged: the loss, gradient norm or a weight stopped being finite; the line names the
       step, which was neither applied nor saved, and the last (finite) checkpoint, kept: resume it with
       a lower --lr
  2    usage error: a bad value, --device not available, an --out that is a file, cannot be written,
       holds a run (without --resume) or is in use by another run, a checkpoint that cannot be resumed,
       settings a resume cannot change, unreadable data, a full disk (the last checkpoint is kept)
  130  interrupted (Ctrl-C): resume with --resume from the checkpoint the line names
  143  terminated (SIGTERM), handled as Ctrl-C
"""
# The help of TrainOptions' flags that need more than their default (the rest are named by the field).
ABOUT = {"batch_size": "examples per micro-batch, all processes together under torchrun ",
         "cache_check": "at each save, a few images of the last batch decoded with and without the KV cache must "
                        "agree, else the run stops naming the first row that differs (default: on)",
         "compat": "original: the original GIT's loss, label-smoothed (--loss original) ",
         "loss": "default: hf, or original with --compat original",
         "workers": "processes that read, crop and preprocess examples ahead of the training step; the same "
                    "batches, losses and resume for any number (0: in the training process; default: on a GPU one a core "
                    "but one, at most 8; on the CPU 0, as the step uses every core) "}
# The command line's defaults where they are not TrainOptions': --workers follows --device (feed.default_workers).
DEFAULTS = {"workers": None}


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
    p.add_argument("--config", metavar="FILE", help="a model config JSON (as in configs/) instead of --preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one field of the model config, checked against its fields (repeatable): "
                        "--set text.norm=pre --set text.n_layers=4")
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
    p.add_argument("--resume", action="store_true",
                   help="continue from the run directory's newest complete checkpoint (see below)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    for f in fields(TrainOptions):
        if f.name == "progress":  # --no-progress, below
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool" or isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=ABOUT.get(f.name))
        else:
            choices = {"loss": LOSSES, "bf16": BF16, "compat": COMPATS}.get(f.name)
            value = DEFAULTS.get(f.name, f.default)
            default = "" if value is None else f"(default: {value})"
            p.add_argument(flag, type=str if f.default is None else type(f.default), default=value,
                           choices=choices, help=f"{ABOUT.get(f.name, '')}{default}".strip())
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    """`git-scratch train` from its parsed command line: the one place the namespace is read."""
    try:
        run = TrainRun(**{f.name: getattr(args, f.name) for f in fields(TrainRun)})
        given = {f.name: getattr(args, f.name) for f in fields(TrainOptions) if f.name != "progress"}
        if given["workers"] is None:
            given["workers"] = default_workers(args.device)
        opts = TrainOptions(**given, progress=not args.no_progress)
    except ValueError as e:  # --steps 0, --lr nan, --out "", --compat original with --loss hf
        return _error(e)
    return train_command(run, opts)


def train_command(run: TrainRun, opts: TrainOptions) -> int:
    """Train as `git-scratch train` does; its exit code. Under torchrun every rank runs it, and meets the same
    errors: rank 0 alone says so."""
    try:
        device = check_device(run.device)
    except ValueError as e:
        return _error(e)
    device = distributed.init(device)  # joins torchrun's process group, if launched by it
    try:
        return _train(run, opts, device)
    finally:
        distributed.teardown()


def _speaks() -> bool:
    """Rank 0, or a plain run: also before torchrun's group is joined, when every rank says it is rank 0."""
    return distributed.is_main() and os.environ.get("RANK", "0") == "0"


def _error(e, code: int = EXIT_USAGE) -> int:
    if _speaks():
        print(f"error: {e}", file=sys.stderr)
    return code


def _train(run: TrainRun, opts: TrainOptions, device) -> int:
    try:
        out = RunDir(run.out, run.resume)  # before any compute: a bad --out, a locked one, what to resume
    except RunError as e:
        return _error(e)
    record = run_record(run)
    try:
        if out.start is not None:
            note = check_resume(out.start, out.state, {**asdict(opts), **record})
            if note and _speaks():
                print(note, file=sys.stderr)
        model, processor, data, val = prepare(run, device, opts.seed)
        train(model, data, processor, opts, out, val=val, record=record)
    except Diverged as e:
        return _error(e, EXIT_FAILED)
    except (RunError, ValueError, OSError) as e:  # a full disk, data with no readable example, shares, files
        return _error(e)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (stops.Terminated)
        if _speaks():
            ckpt = latest_checkpoint(out.path)
            then = f"resume with --resume from {ckpt}" if ckpt else "no checkpoint was saved yet"
            print(f"{stopped_name(e)}; {then}", file=sys.stderr)
        return stopped_code(e)
    finally:
        out.close()
    return EXIT_OK
