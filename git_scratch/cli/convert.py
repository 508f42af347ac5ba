"""`git-scratch convert SRC DST` (also `python -m git_scratch.convert`): its parser and the command (convert/)."""

from __future__ import annotations

import argparse
import sys

from ..constants import DTYPE_NAMES, EXIT_USAGE

EXAMPLES = """\
examples:
  # a hub id (pip install 'git_scratch[hub]'), or a Hugging Face folder you downloaded
  git-scratch convert microsoft/git-base-coco ckpt/git-base-coco
  git-scratch convert git-base-coco ckpt/git-base-coco
  # half the disk, weights stored as bfloat16
  git-scratch convert git-base-coco ckpt/git-base-coco-bf16 --dtype bfloat16
  # back to Hugging Face, loadable with transformers.GitForCausalLM.from_pretrained
  git-scratch convert ckpt/git-base-coco hf/git-base-coco --to-hf
  # the original GIT's model.pt (github.com/microsoft/GenerativeImage2Text), its shape from a Hugging Face
  # config.json (tokenizer and preprocessing files beside it are copied too) or from a preset
  git-scratch convert GIT_BASE_COCO/model.pt ckpt/git-base-coco --config git-base-coco/config.json
  git-scratch convert GIT_BASE_COCO/model.pt ckpt/git-base-coco --preset git-base-coco
"""
# A source that cannot be converted exits 2, as a usage error does (the arguments name something unusable),
# whichever entry point runs this: `git-scratch convert` keeps the git-scratch command's codes.
EXIT_CODES = ("\nexit codes:\n  0  converted\n"
              "  2  usage error, or the source cannot be converted (the error line says why)\n")


def add_parser(sub) -> None:
    """Register `git-scratch convert` on the CLI's subparsers."""
    p = sub.add_parser("convert", help="convert a Hugging Face or original GIT checkpoint (or back with --to-hf)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Convert a Hugging Face GIT checkpoint (a folder, or a hub id owner/name[@revision] "
                                   "with pip install 'git_scratch[hub]'), or the original GIT's model.pt, into a "
                                   "git_scratch checkpoint directory (or a git_scratch checkpoint back to Hugging "
                                   "Face). Any command's -c also takes a Hugging Face folder or hub id, converted "
                                   "once into a cache: converting by hand is for keeping the folder.",
                       epilog=EXAMPLES + EXIT_CODES)
    p.set_defaults(run=run)
    p.add_argument("src", help="source: a Hugging Face GIT folder or hub id owner/name[@revision] (git_scratch "
                               "with --to-hf), or the original GIT's model.pt (with --config or --preset)")
    p.add_argument("dst", help="destination directory; written atomically, created if missing")
    p.add_argument("--dtype", choices=DTYPE_NAMES, help="cast floating-point weights")
    p.add_argument("--to-hf", action="store_true", help="convert a git_scratch checkpoint back to Hugging Face")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--config", metavar="CONFIG.json",
                       help="original model.pt: its shape, from a Hugging Face GIT config.json")
    shape.add_argument("--preset", metavar="NAME",
                       help="original model.pt: its shape, from a preset (e.g. git-base-coco)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")
    p.add_argument("--trust-pickle", action="store_true",
                   help="read a pytorch_model.bin or model.pt that holds more than tensors (pickled Python objects, "
                        "which can run any code while loading); only for a file from a source you trust")


def run(args: argparse.Namespace) -> int:
    """Convert; 0 when done, 2 with one `error: ...` line when the source cannot be converted."""
    from ..convert.convert import convert
    from ..convert.rename import ConversionError

    try:
        summary = convert(args.src, args.dst, dtype=args.dtype, to_hf=args.to_hf, overwrite=args.overwrite,
                          trust_pickle=args.trust_pickle, config=args.config, preset=args.preset)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    direction = ("original GIT -> git_scratch" if summary["original"] else
                 "git_scratch -> Hugging Face" if args.to_hf else "Hugging Face -> git_scratch")
    print(f"converted {args.src} -> {args.dst} ({direction}): {summary['tensors']} tensors", file=sys.stderr)
    if summary["original"]:
        print("  LM head tied to the word embedding, as the original builds it", file=sys.stderr)
    if summary["dropped"]:
        what = "unused by GIT" if summary["original"] else "non-persistent buffers"
        print(f"  dropped ({what}): {', '.join(summary['dropped'])}", file=sys.stderr)
    copied = ", ".join(summary["copied"]) or "none found (captioning needs tokenizer.json or vocab.txt)"
    print(f"  tokenizer/processor files copied: {copied}", file=sys.stderr)
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
