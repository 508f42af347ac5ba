"""The `git-scratch` command: caption images, answer questions about them, describe videos, convert checkpoints.

    git-scratch caption photos/ -c microsoft/git-base-coco --output captions.jsonl
    git-scratch vqa cat.jpg -q "what is the cat doing?" -q "what color is it?" -c microsoft/git-base-vqav2
    git-scratch video clip.mp4 -c microsoft/git-base-vatex
    git-scratch convert microsoft/git-base-coco ckpt/git-base-coco

This file is the top-level parser: every command registers its own parser from its module (`add_parser(sub)`,
which sets the `run` that takes the parsed arguments), and every model option comes from options.py.
"""

from __future__ import annotations

import argparse
import sys

from . import caption, classify, convert, demo, evaluate, explain, export_onnx, init, serve, train
from .caption import EXAMPLES, EXIT_CODES
from .stops import run_stoppable

# What a stop that escapes a command leaves (train says more itself once it trains: the checkpoint to resume).
STOPPED = {"train": "nothing trained yet", "eval": "nothing written", "demo": "nothing written",
           "classify": "nothing written", "explain": "nothing written", "export-onnx": "nothing written",
           "convert": "nothing written", "init": "nothing written", "serve": "nothing written"}


# ---------------------------------------------------------------- the command line
def build_parser() -> argparse.ArgumentParser:
    """The parser: each command's module registers its own (`add_parser(sub)`, which sets its `run`)."""
    p = argparse.ArgumentParser(
        prog="git-scratch",
        description="GIT (Generative Image-to-text Transformer): caption images, answer questions about "
                    "images and videos, convert Hugging Face checkpoints.",
        epilog="examples:\n" + "".join(ex.split("\n", 2)[1] + "\n" for ex in EXAMPLES.values())
               + "  git-scratch convert microsoft/git-base-coco ckpt/git-base-coco\n\n"
               + "Run git-scratch COMMAND --help for a command's options.\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p.commands = sub.choices  # name -> its parser, so that checks after parsing speak as the subcommand
    # Their libraries (torch, onnxruntime, the web stack) load only when a command runs.
    for command in (caption, convert, train, evaluate, demo, classify, explain, export_onnx, serve, init):
        command.add_parser(sub)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    args.parser = parser.commands[args.command]  # usage errors after parsing speak as the subcommand
    if unknown:  # argparse would report them with the top level's usage; the subcommand's is the useful one
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return run_stoppable(lambda: args.run(args), saved=STOPPED.get(args.command, "finished results are saved"))
