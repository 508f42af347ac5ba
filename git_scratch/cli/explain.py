"""`git-scratch explain`: caption an image (or answer a question) and show where each new word looked.

Everything that can be checked is checked before the model loads: the options, the image, the question's
length, and --out (preflight.WholeFile: never a file git-scratch did not write, never an input; a PNG this
command wrote carries its mark, SOFTWARE below, and may be replaced). Any problem: one `error:`
line naming it, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..constants import EXIT_OK, EXIT_USAGE
from ..explain import NEEDS_TORCH
from ..export.runtime import is_export
from ..generation.checks import decoding_error, flag, room_error
from .items import expand, reason
from .options import add_model_options, checkpoint_path, open_checkpoint
from .preflight import WholeFile, checkpoint_files, has_png_mark, png_mark


LEGENDS = {
    "last": "Each panel: where the model looked while choosing that word (the last decoder layer's attention "
            "from the position that predicted it to the image patches, averaged over heads); bright = more, "
            "each panel scaled to its own maximum.",
    "rollout": "Each panel: attention rollout (Abnar & Zuidema 2020) over every decoder layer from the position "
               "that predicted the word to the image patches, the residual counted as half of each layer; "
               "bright = more, each panel scaled to its own maximum.",
}

SOFTWARE = "git-scratch explain"  # the PNG's Software text (preflight.png_mark): a rerun may replace a file carrying it

EPILOG = """\
examples:
  git-scratch explain photo.jpg -c ckpt/git-base-coco                     # -> explain.png
  git-scratch explain photo.jpg -c ckpt/git-base-vqav2 -q "what is the man holding?" --out man.png
  git-scratch explain shape.png -c runs/shapes/latest --method rollout --json

output:
  --out FILE.png (default explain.png): the image, then one panel per generated word with its heat map.
  Only a new file or a PNG that explain wrote before is written; any other file is refused, left as it was.
  --json: one JSON object per new token, no PNG: {"token": the word piece, "id": its id, "map": the patch
  grid as a list of rows, non-negative, summing to 1 (a video checkpoint: one grid per frame)}.

maps:
  last     the last decoder layer's attention, averaged over heads (default)
  rollout  attention rollout over the decoder layers
  Both use the attention row of the position that predicted the word, and drop the vision encoder's class
  token (it has no place in the image), renormalising over the patches.

exit codes:
  0  written (or printed)
  2  usage error: a bad option, an unreadable image, a question too long, an --out that may not be written,
     a checkpoint that cannot be loaded
"""


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `git-scratch explain` on the CLI's subparsers."""
    p = sub.add_parser("explain", help="show which image patches each generated word looked at (a PNG)",
                       description="Caption an image, or answer a question about it, and draw for each new word "
                                   "a heat map of its attention to the image patches, in one PNG.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE", help="one image file")
    p.add_argument("--question", "-q", help="a question (default: none, a caption)")
    p.add_argument("--out", default="explain.png", metavar="FILE.png", help="the picture (default explain.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object per new token instead of a PNG")
    p.add_argument("--method", choices=("last", "rollout"), default="last", help="default: last")
    p.add_argument("--max-new-tokens", type=int, default=20, metavar="N", help="at least 1 (default 20)")
    add_model_options(p, dtype=False, quantize=False)
    p.set_defaults(run=run_explain)
    return p


def check(args: argparse.Namespace) -> WholeFile | None:
    """ValueError naming the flag for options that cannot run, before the model loads; -> the checked --out
    (None with --json)."""
    if why := decoding_error(max_new_tokens=args.max_new_tokens, spell=flag):
        raise ValueError(why)
    if is_export(ckpt := checkpoint_path(args.checkpoint)):
        raise ValueError(f"--checkpoint {args.checkpoint}: {NEEDS_TORCH}")
    if args.question is not None and not args.question.strip():
        raise ValueError("--question must not be empty")
    items = expand([args.image])
    if len(items) != 1 or items[0].error or not items[0].path.is_file():
        why = items[0].error if len(items) == 1 and items[0].error else "not one image file"
        raise ValueError(f"{args.image}: {why}")
    if args.json:
        return None
    out = WholeFile(args.out, "--out", has_png_mark(SOFTWARE), checkpoint_files(ckpt) + (Path(args.image),))
    out.check()
    return out


def run_explain(args: argparse.Namespace) -> int:
    """`git-scratch explain` from its parsed command line; the exit code."""
    import torch

    from ..explain import explain, picture

    try:
        out = check(args)
        opened = open_checkpoint(args)
        model, processor = opened.model, opened.processor
        prompt = processor.tokenizer.encode(args.question) if args.question else [processor.tokenizer.cls_id]
        if why := room_error(len(prompt), args.max_new_tokens, opened.room, what="--question", spell=flag):
            raise ValueError(why)
        item = expand([args.image])[0]
        try:
            pixels = processor(images=[item.path]).pixel_values  # (1, 3, H, W)
        except Exception as e:  # an unreadable image is this run's one input: a usage error
            raise ValueError(f"{args.image}: {reason(e, item)}") from None
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    words = explain(model, processor.tokenizer, pixels, torch.tensor([prompt]), method=args.method,
                    max_new_tokens=args.max_new_tokens)
    if args.json:
        for w in words:
            print(json.dumps(w))
        return EXIT_OK
    said = processor.tokenizer.decode([w["id"] for w in words]).strip()
    title = f"{args.question}  ->  {said}" if args.question else f"caption: {said}"
    sheet = picture(model_view(processor, pixels[0]), words, title, f"method: {args.method}. {LEGENDS[args.method]}")
    try:
        written = out.write(lambda f: sheet.save(f, format="PNG", pnginfo=png_mark(SOFTWARE)))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{title}\npicture: {written}")
    return EXIT_OK


def model_view(processor, pixels):
    """The image as the model saw it (resized, centre-cropped): pixels (3, H, W) un-normalised to a PIL image."""
    import numpy as np
    from PIL import Image

    from ..preprocessing.pixels import CLIP_MEAN, CLIP_STD

    cfg = processor.image_config
    mean, std = (cfg.image_mean, cfg.image_std) if cfg is not None and cfg.do_normalize else (CLIP_MEAN, CLIP_STD)
    rgb = pixels.float().numpy().transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)  # (H, W, 3) in 0..1
    return Image.fromarray((rgb * 255).round().clip(0, 255).astype(np.uint8))
