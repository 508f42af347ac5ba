"""`git-scratch classify`: answers from a fixed set of labels (generation/classify.py), per image and question.

Inputs are read as `caption` reads them (files, folders, globs: items.expand); an input that cannot be
read is an `error:` line and the others go on (exit 1). The label file, the checkpoint and the options
are checked before the model loads: a problem there is one `error:` line naming the flag, exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from ..constants import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from ..generation.checks import decoding_error, flag
from ..preprocessing.processor import printable
from .items import expand, line_start, reason
from .options import add_model_options, checkpoint_path, open_checkpoint, text_positions

EPILOG = """\
examples:
  git-scratch classify photo.jpg --labels imagenet.txt -c ckpt/git-base-coco --top-k 5
  git-scratch classify shapes/ --labels colors.txt -q "what color is the circle?" -c ckpt/shapes --json
  git-scratch classify 'photos/*.jpg' --labels many.txt --method trie --num-beams 4 -c ckpt/git-base

methods:
  rank  every label scored by its summed log-probability (its word pieces, then [SEP]) after the prompt
        ([CLS], or [CLS] + the question); exact, one teacher-forced pass over all labels per image batch
  trie  decoding (greedy, or beam search with --num-beams) where only a continuation of a label may be
        generated; for label sets too large to rank; may miss the best label, as any search may

output:
  text (default): one line per label, best first: INPUT<TAB>[QUESTION<TAB>]LABEL<TAB>SCORE
  --json: one object per input and question: {"input", "file", "question", "text" (the best label),
  "labels" (the top K, best first), "scores" (their summed log-probabilities), "settings"}; a failed input
  is {"input", "file", "error", "settings"}.

label file: UTF-8 text, one label per line (blank lines and surrounding spaces ignored).

exit codes:
  0  every input classified
  1  some inputs failed (each on an "error: INPUT: REASON" line); the others were classified
  2  usage error: a bad option, label file or checkpoint; nothing ran
"""


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `git-scratch classify` on the CLI's subparsers."""
    p = sub.add_parser("classify", help="answer with one of a fixed set of labels (rank or trie decoding)",
                       description="Pick, for each image (and question), the most likely labels of a fixed set: "
                                   "by ranking them all (exact) or by decoding under a token trie (for large sets).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders of images or glob patterns")
    p.add_argument("--labels", required=True, metavar="FILE", help="the labels, one per line (UTF-8)")
    p.add_argument("--question", "-q", action="append",
                   help="a question asked before the label; repeat for several (default: none, a caption prompt)")
    p.add_argument("--method", choices=("rank", "trie"), default="rank", help="default: rank")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="labels shown per image, best first (default: 3 with rank, --num-beams with trie)")
    p.add_argument("--num-beams", type=int, metavar="K", help="with --method trie: beam search width (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per input and question")
    p.add_argument("--batch-size", "-b", type=int, default=8, metavar="B", help="images per batch (default 8)")
    add_model_options(p)
    p.set_defaults(run=run_classify)
    return p


def read_labels(path: str) -> list[str]:
    """The label file's labels, in order; ValueError naming --labels for a file that cannot be one."""
    said = f"--labels {path}"
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise ValueError(f"{said}: a folder; name a file of labels, one per line") from None
    except OSError as e:
        raise ValueError(f"{said}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")  # a BOM, if any, is not part of the first label
    except UnicodeDecodeError as e:
        raise ValueError(f"{said}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    labels, line_of = [], {}
    for n, line in enumerate(text.splitlines(), 1):
        label = line.strip()
        if not label:
            continue
        if label in line_of:
            raise ValueError(f"{said}: line {n} repeats the label {label!r} of line {line_of[label]}")
        line_of[label] = n
        labels.append(label)
    if not labels:
        raise ValueError(f"{said}: no labels (it is {'empty' if not text else 'blank'}); write one label per line")
    return labels


def check(args: argparse.Namespace) -> tuple[list[str], Path]:
    """(labels, checkpoint directory); ValueError naming the flag for anything that cannot run, before the
    model loads. Labels too long for the model's text positions are checked in `label_ids_checked`."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_beams is not None and (why := decoding_error(num_beams=args.num_beams, spell=flag)):
        raise ValueError(why)
    if args.num_beams is not None and args.method == "rank":
        raise ValueError("--num-beams is for --method trie; rank scores every label, no search")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    beams = args.num_beams or 1
    if args.method == "trie" and args.top_k is not None and args.top_k > beams:
        raise ValueError(f"--top-k {args.top_k} needs --num-beams {args.top_k} or more: trie decoding finds one "
                         "label per beam")
    if any(not q.strip() for q in args.question or []):
        raise ValueError("--question must not be empty")
    labels = read_labels(args.labels)
    if args.top_k is not None and args.top_k > len(labels):
        raise ValueError(f"--top-k {args.top_k}: {args.labels} has only {len(labels)} label(s)")
    return labels, checkpoint_path(args.checkpoint)


def label_ids_checked(processor, labels: list[str], questions: list, limit: int | None, path: str):
    """Each label's word pieces (classify.label_ids); ValueError naming --labels for a label that is no
    word pieces, two that tokenize alike, or one that with the longest prompt needs more text positions
    than the model has."""
    from ..generation.classify import label_ids

    try:
        ids = label_ids(processor.tokenizer, labels)
    except ValueError as e:
        raise ValueError(f"--labels {path}: {e}") from None
    prompt = max(len(processor.tokenizer.encode(q)) if q else 1 for q in questions)  # [CLS] (+ question)
    for label, pieces in zip(labels, ids):
        if limit is not None and prompt + len(pieces) > limit:  # [SEP] is predicted, never fed: not counted
            raise ValueError(f"--labels {path}: the label {label!r} is {len(pieces)} word pieces; after a "
                             f"{prompt}-token prompt it needs {prompt + len(pieces)} text positions, the model "
                             f"has {limit}")
    return ids


def settings(args, opened, labels: list[str], top_k: int) -> dict:
    """What changes a result: the checkpoint and its precision, the label set, the method and its options."""
    s = opened.settings()
    return {"checkpoint": s.pop("checkpoint"), "labels": hashlib.sha256("\n".join(labels).encode()).hexdigest()[:16],
            "method": args.method, "top_k": top_k, "num_beams": args.num_beams or 1, **s}


def run_classify(args: argparse.Namespace) -> int:
    """`git-scratch classify` from its parsed command line; the exit code."""
    from ..preprocessing.processor import Processor

    try:
        labels, ckpt = check(args)
        questions = args.question or [None]
        processor = Processor.from_pretrained(ckpt)  # the tokenizer alone, before the model: labels are checked
        if processor.tokenizer is None:
            raise ValueError(f"--checkpoint {ckpt}: no tokenizer files (tokenizer.json or vocab.txt)")
        ids = label_ids_checked(processor, labels, questions, text_positions(ckpt), args.labels)
        opened = open_checkpoint(args)
        model, processor = opened.model, opened.processor
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    top_k = args.top_k or (min(3, len(labels)) if args.method == "rank" else min(args.num_beams or 1, len(labels)))
    out = Printer(args.json, settings(args, opened, labels, top_k), labels)
    items = expand(args.inputs)
    for start in range(0, len(items), args.batch_size):
        classify_batch(model, processor, items[start : start + args.batch_size], ids, questions, args, top_k, out)
    if out.n_failed:
        print(f"{out.n_failed} failure(s), each on an error line above", file=sys.stderr)
    return EXIT_FAILED if out.n_failed else EXIT_OK


def classify_batch(model, processor, items, ids, questions, args, top_k: int, out: Printer) -> None:
    """Load the batch's images (a bad one is reported alone), encode them once, classify every question."""
    import torch

    from ..generation.classify import best, rank, trie

    good, pixels = [], []
    for item in items:
        if item.error:
            out.error(item, item.error)
            continue
        try:
            pixels.append(processor(images=[item.path]).pixel_values[0])
            good.append(item)
        except Exception as e:  # any unreadable input is reported, never fatal
            out.error(item, reason(e, item))
    if not good:
        return
    found = {}  # question -> per image, the (label index, score) pairs best first
    try:
        with torch.inference_mode():
            image = model.encode_image(torch.stack(pixels).to(model.device, model.dtype))  # once per image
            for q in questions:
                prompt = None if q is None else processor.tokenizer.encode(q)
                if args.method == "rank":
                    found[q] = best(rank(model, ids, image=image, prompt=prompt), top_k)
                else:
                    found[q] = trie(model, ids, image=image, prompt=prompt, num_beams=args.num_beams or 1)
    except Exception as e:  # out of memory, say: every input of this batch fails with it
        for item in good:
            out.error(item, reason(e, item))
        return
    for i, item in enumerate(good):  # image-major, as caption and vqa print
        for q in questions:
            out.ok(item, q, found[q][i][:top_k])


class Printer:
    """Results to stdout (text lines or JSON objects); failures to stderr (and stdout with --json)."""

    def __init__(self, json_out: bool, settings: dict, labels: list[str]):
        self.json, self.settings, self.labels, self.n_failed = json_out, settings, labels, 0

    def ok(self, item, question, pairs) -> None:
        names, scores = [self.labels[i] for i, _ in pairs], [round(s, 6) for _, s in pairs]
        if self.json:
            rec = {"input": item.input, "file": item.key, "question": question, "text": names[0], "labels": names,
                   "scores": scores, "settings": self.settings}
            print(json.dumps(rec, ensure_ascii=False))
        else:
            for name, score in zip(names, scores):
                print(f"{line_start(item.input, question)}{printable(name)}\t{score:.4f}")
        sys.stdout.flush()

    def error(self, item, why: str) -> None:
        self.n_failed += 1
        print(f"error: {printable(item.input)}: {why}", file=sys.stderr)
        if self.json:
            print(json.dumps({"input": item.input, "file": item.key, "error": why, "settings": self.settings},
                             ensure_ascii=False))
