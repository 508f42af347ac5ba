"""`git-scratch export-onnx CKPT OUT_DIR`: a checkpoint as ONNX graphs with a KV cache (export/onnx.py), in a
folder that is itself a checkpoint: `git-scratch caption|vqa -c OUT_DIR` runs it on onnxruntime.

Usage errors are one line naming what is wrong, exit 2, before the model loads. The folder is written beside
OUT_DIR and renamed onto it at the end, so an export that fails or is stopped leaves no half a checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..constants import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from ..export import MANIFEST, MIN_OPSET, OPSET
from ..load import umask_mode
from .options import NAME_HELP, checkpoint_path

EPILOG = """\
graphs (Bi images, K rows per image, n new tokens, S text slots; the rest are the checkpoint's sizes):
  image_encoder.onnx   pixel_values (Bi, 3, H, W) -> image (Bi, N, D)          (video: (Bi, F, 3, H, W))
  image_prefill.onnx   image -> image_kv (layers, 2, Bi, heads, N, Dh)
  decoder_step.onnx    ids (Bi, K, n), start, last (Bi, K), text_kv (layers, 2, Bi, K, heads, S, Dh),
                       image_kv -> logits (Bi, K, V), text_kv_out

examples:
  git-scratch export-onnx ckpt/git-base-coco onnx/git-base-coco
  git-scratch caption photo.jpg -c onnx/git-base-coco --num-beams 4 --json
  git-scratch vqa photo.jpg -q "what is it?" -c onnx/git-base-coco

exit codes:
  0  exported, checked by onnx.checker, and onnxruntime agrees with torch
  1  the export ran but onnxruntime's logits differ from torch's by more than --tolerance (nothing written)
  2  usage error: no such checkpoint, an unconverted one, OUT_DIR not empty, onnx not installed
"""

# The final check's bound on |logit| differences, as a fraction of the largest |logit| (at least 1): float32
# sums in another order stay near 1e-6 of it (tests/test_onnx.py measures); a wrong graph is off by far more.
TOLERANCE = 1e-3


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `git-scratch export-onnx` on the CLI's subparsers."""
    p = sub.add_parser("export-onnx", help="export a checkpoint to ONNX (KV cache included) for onnxruntime",
                       description="Export a converted git_scratch checkpoint as three ONNX graphs (the image "
                                   "encoder, the image prefill, the decoder step over an explicit KV cache) into "
                                   "OUT_DIR, with its config, preprocessing and tokenizer files: OUT_DIR is then "
                                   "a checkpoint that caption and vqa run on onnxruntime with git_scratch's own "
                                   "greedy and beam searches. Needs pip install 'git_scratch[onnx]'.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="NAME", help=NAME_HELP)
    p.add_argument("out", metavar="OUT_DIR", help="the folder to write: new, or empty")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, {MIN_OPSET} or more (default {OPSET})")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help="largest |logit| difference from torch the final check accepts, as a fraction of the "
                        f"largest |logit| (default {TOLERANCE:g})")
    p.set_defaults(run=run_export)
    return p


def check(args: argparse.Namespace) -> str | None:
    """The usage error in these arguments, or None; nothing is loaded or written."""
    try:
        ckpt = checkpoint_path(args.checkpoint)
    except ValueError as e:
        return str(e)
    out = Path(args.out)
    if (ckpt / MANIFEST).is_file():
        return f"{args.checkpoint} is an ONNX export already; export the torch checkpoint it came from"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return f"OUT_DIR {out}: {'not empty' if out.is_dir() else 'a file'}; give a new or empty folder"
    if out.resolve() == ckpt.resolve() or ckpt.resolve() in out.resolve().parents:
        return f"OUT_DIR {out}: inside CKPT; give a folder of its own"
    if args.opset < MIN_OPSET:
        return f"--opset {args.opset}: the exporter writes opset {MIN_OPSET} or more"
    if not args.tolerance > 0:
        return f"--tolerance must be > 0, got {args.tolerance}"
    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if not _installed(name)]
    if missing:
        return f"{', '.join(missing)} not installed: pip install 'git_scratch[onnx]'"
    return None


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_export(args: argparse.Namespace) -> int:
    """Export, check with onnxruntime, and move the folder into place; the exit code."""
    if why := check(args):
        print(f"error: {why}", file=sys.stderr)
        return EXIT_USAGE
    from ..export.onnx import compare, export_checkpoint

    ckpt, out = checkpoint_path(args.checkpoint), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # renamed onto OUT_DIR when done
    work.chmod(umask_mode(directory=True))  # mkdtemp's is 0700; the folder should be an ordinary one
    t0 = time.perf_counter()
    try:
        try:
            model = export_checkpoint(ckpt, work, args.opset, log=lambda line: print(line, file=sys.stderr))
        except (OSError, ValueError) as e:  # load's messages name the file at fault
            print(f"error: cannot export {ckpt}: {' '.join(str(e).split())}", file=sys.stderr)
            return EXIT_USAGE
        print("checking: onnxruntime against torch on one image", file=sys.stderr)
        diff, largest = compare(model, work)
        print(f"max |logit difference| onnxruntime vs torch: {diff:.2e} (largest |logit| {largest:.1f})",
              file=sys.stderr)
        if not diff <= args.tolerance * max(1.0, largest):
            print(f"error: onnxruntime's logits differ from torch's by {diff:.2e}, more than --tolerance "
                  f"{args.tolerance:g} of the largest |logit|; nothing written to {out}", file=sys.stderr)
            return EXIT_FAILED
        if out.exists():
            out.rmdir()  # empty (checked); rename needs the name free
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already when renamed
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    usage = "video VIDEO" if model.config.n_frames else "caption IMAGE"
    print(f"wrote {out} ({size:.1f} MB) in {time.perf_counter() - t0:.0f} s; run it with: "
          f"git-scratch {usage} -c {out}", file=sys.stderr)
    return EXIT_OK
