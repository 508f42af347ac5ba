"""`git-scratch caption`, `vqa` and `video`: the batched commands, their parsers and their help.

options.py reads their options (RunOptions) and batch.py runs the inputs (batches, one encoding per image, resume).
"""

from __future__ import annotations

import argparse

from ..constants import COMPATS
from .options import add_model_options, run_options

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
  git-scratch caption cat.jpg --checkpoint microsoft/git-base-coco
  git-scratch caption photos/ 'more/**/*.png' --checkpoint microsoft/git-base-coco --batch-size 16 --output captions.jsonl
  git-scratch caption cat.jpg --checkpoint microsoft/git-base-coco --num-beams 4 --json
  git-scratch caption cat.jpg --checkpoint microsoft/git-base-coco --sample --top-p 0.9 --seed 0 --stream
""",
    "vqa": """\
examples:
  git-scratch vqa cat.jpg -q "what is the cat doing?" --checkpoint microsoft/git-base-vqav2
  # several questions about one image cost one image encoding
  git-scratch vqa cat.jpg -q "what color is the cat?" -q "how many cats are there?" --checkpoint microsoft/git-base-vqav2
  git-scratch vqa photos/ -q "what is this?" --checkpoint microsoft/git-base-vqav2 --output answers.jsonl
""",
    "video": """\
examples:
  git-scratch video clip.mp4 --checkpoint microsoft/git-base-vatex          (video files need: pip install av)
  git-scratch video frames/ --checkpoint microsoft/git-base-vatex           (a folder of frames, in name order)
  git-scratch video clip.gif -q "what is the man doing?" --checkpoint microsoft/git-base-msrvtt-qa
""",
}




def positive(kind):
    """An argparse type: `kind`, greater than 0."""
    def parse(s: str):
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'abc'" names the type by this
    return parse


def add_batched_options(p: argparse.ArgumentParser) -> None:
    """The options caption, vqa and video share: the model's, generation, running, output."""
    add_model_options(p, compile=True)
    g = p.add_argument_group("generation")
    g.add_argument("--compat", choices=COMPATS, default="transformers",
                   help="whose behaviour to reproduce (default: transformers): transformers' GIT, or 'original', "
                        "microsoft/GenerativeImage2Text's own code: its pixels (crop offsets rounded; VQA "
                        "checkpoints keep the aspect ratio), its question truncation (the last 38 of the first 40 "
                        "wordpieces) and its beam search (4 beams, length penalty 0.6); the README's table lists "
                        "every difference")
    g.add_argument("--max-new-tokens", type=int, metavar="N",
                   help="default: 20 (with --compat original: see --max-length)")
    g.add_argument("--max-length", type=positive(int), metavar="N",
                   help="with --compat original: most tokens in [CLS] + question + answer + [SEP], as the "
                        "original counts them (default: the model's text positions, 1024 for published ones)")
    g.add_argument("--num-beams", type=int, metavar="K",
                   help="beam search width (default: 1, greedy; 4 with --compat original)")
    g.add_argument("--sample", action="store_true", help="sample instead of taking the most likely token")
    # None = not given: run_options (options.py) refuses sampling options without --sample, then fills in defaults
    g.add_argument("--temperature", type=float, help="with --sample (default: 1.0)")
    g.add_argument("--top-k", type=int, metavar="K",
                   help="with --sample: keep the K most likely tokens (default: 0, all)")
    g.add_argument("--top-p", type=float, metavar="P", help="with --sample: nucleus sampling (default: 1.0, off)")
    g.add_argument("--seed", type=int,
                   help="random seed for --sample: each input's sample depends only on the seed and that input")
    r = p.add_argument_group("running")
    r.add_argument("--max-pixels", type=positive(int), metavar="N",
                   help="skip images with more than N pixels (decompression bombs); default: Pillow's limit, "
                        "about 89 million; also the most an image may have once resized, so that a tiny image of "
                        "an extreme aspect ratio cannot grow to billions of pixels")
    r.add_argument("--batch-size", "-b", type=positive(int), default=8, metavar="B",
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


def add_parser(sub) -> None:
    """Register `caption`, `vqa` and `video` on the CLI's subparsers."""
    fmt = dict(formatter_class=argparse.RawDescriptionHelpFormatter)
    c = sub.add_parser("caption", help="one caption per image", epilog=EXAMPLES["caption"] + "\n" + OUTPUT_FORMAT
                       + "\n" + EXIT_CODES, description="Caption images.", **fmt)
    c.add_argument("inputs", nargs="+", metavar="IMAGE",
                   help="image files, folders of images (not recursive) or glob patterns ('photos/**/*.jpg')")
    add_batched_options(c)
    c.set_defaults(question=None, run=run)

    v = sub.add_parser("vqa", help="answer questions about images", epilog=EXAMPLES["vqa"] + "\n" + OUTPUT_FORMAT
                       + "\n" + EXIT_CODES, description="Answer questions about images.", **fmt)
    v.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders of images or glob patterns")
    v.add_argument("--question", "-q", action="append", required=True, help="a question; repeat for several")
    add_batched_options(v)
    v.set_defaults(run=run)

    d = sub.add_parser("video", help="caption videos, or answer questions about them", epilog=EXAMPLES["video"]
                       + "\n" + OUTPUT_FORMAT + "\n" + EXIT_CODES, **fmt,
                       description="Caption a video or answer questions about it. The checkpoint's number of "
                                   "frames (num_image_with_embedding) are sampled evenly from each input.")
    d.add_argument("inputs", nargs="+", metavar="VIDEO",
                   help="video files (mp4, avi, ...; needs PyAV), animated GIFs, folders of frames, glob patterns")
    d.add_argument("--question", "-q", action="append", help="a question; repeat for several (default: a caption)")
    add_batched_options(d)
    d.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """A batched command from its parsed command line; the exit code."""
    from .batch import run_inputs

    return run_inputs(run_options(args.parser, args))
