"""python -m weights_convert SRC DST  (also: git-scratch convert SRC DST)."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """\
examples:
  # a Hugging Face checkpoint you downloaded (e.g. huggingface-cli download microsoft/git-base-coco --local-dir git-base-coco)
  python -m weights_convert git-base-coco ckpt/git-base-coco
  # half the disk, weights stored as bfloat16
  python -m weights_convert git-base-coco ckpt/git-base-coco-bf16 --dtype bfloat16
  # back to Hugging Face, loadable with transformers.GitForCausalLM.from_pretrained
  python -m weights_convert ckpt/git-base-coco hf/git-base-coco --to-hf
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="source checkpoint directory (Hugging Face GIT, or git_scratch with --to-hf)")
    p.add_argument("dst", help="destination directory; written atomically, created if missing")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="cast floating-point weights")
    p.add_argument("--to-hf", action="store_true", help="convert a git_scratch checkpoint back to Hugging Face")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")


def run(args: argparse.Namespace) -> int:
    from .convert import ConversionError, convert

    try:
        summary = convert(args.src, args.dst, dtype=args.dtype, to_hf=args.to_hf, overwrite=args.overwrite)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    direction = "git_scratch -> Hugging Face" if args.to_hf else "Hugging Face -> git_scratch"
    print(f"converted {args.src} -> {args.dst} ({direction}): {summary['tensors']} tensors", file=sys.stderr)
    if summary["dropped"]:
        print(f"  dropped non-persistent buffers: {', '.join(summary['dropped'])}", file=sys.stderr)
    copied = ", ".join(summary["copied"]) or "none found (captioning needs tokenizer.json or vocab.txt)"
    print(f"  tokenizer/processor files copied: {copied}", file=sys.stderr)
    return 0


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m weights_convert")
    p.description = "Convert a Hugging Face GIT checkpoint into a git_scratch checkpoint directory (or back)."
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(p)
    return p


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
