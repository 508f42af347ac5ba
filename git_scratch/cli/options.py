"""The options every command shares, written once: `add_model_options` puts the model's on a parser (the name,
--device, --dtype, --quantize, --compile where they apply) and `open_checkpoint` opens what they name
(sources.open_model). And RunOptions: what a batched run (`caption`, `vqa`, `video`) is asked, its defaults filled
in, read from the command line by `run_options`, which refuses a combination that cannot run.

batch.py (Runner, run_inputs, plan) and results.py (run_settings) take RunOptions, so a batched run can be made
and tested without a command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import DTYPE_HELP, QUANTIZE_HELP, QUANTIZE_MODES, RUN_DTYPES
from ..generation.checks import decoding_error, flag, room_error

NAME_HELP = ("the model: demo (the shipped shapes model), a git_scratch checkpoint folder, a training run or its "
             "`latest`, an export-onnx folder, a Hugging Face GIT folder or a hub id owner/name[@revision] "
             "(converted once into a cache)")
MISSING = ("--checkpoint/-c is required: name the model, e.g. -c demo (the shipped shapes model), -c ckpt/DIR, or "
           "-c microsoft/git-base-coco (a hub id; needs pip install 'git_scratch[hub]')")


def add_model_options(p: argparse.ArgumentParser, default: str | None = None, dtype: bool = True,
                      quantize: bool = True, compile: bool = False, device: str = "auto") -> None:
    """The model's options on `p`: -c/--checkpoint NAME (`default` where the command has one), --device, and,
    where the command can use them, --dtype, --quantize and --compile."""
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", "-c", default=default, metavar="NAME",
                   help=NAME_HELP + (f" (default: {default})" if default else ""))
    g.add_argument("--device", default=device, help=f"auto, cpu, cuda, cuda:N or mps (default: {device})")
    if dtype:
        g.add_argument("--dtype", default="float32", choices=RUN_DTYPES, help=DTYPE_HELP)
    if quantize:
        g.add_argument("--quantize", choices=QUANTIZE_MODES, help=QUANTIZE_HELP)
    if compile:
        g.add_argument("--compile", action="store_true",
                       help="compile the decode step (torch.compile; on CUDA a captured CUDA graph): the same ids, "
                            "faster steps after a one-off compile per batch shape; worth it for many inputs")


def checkpoint_path(name: str | None):
    """The folder -c NAME names (sources.resolve: it may fetch and convert), or ValueError, one line."""
    from ..sources import resolve  # with the model files: loaded when a command runs, not for --help

    if name is None:
        raise ValueError(MISSING)
    try:
        with warnings.catch_warnings(record=True) as caught:  # a conversion's notes, said once as the CLI says them
            warnings.simplefilter("always")
            path = resolve(name)
    except ValueError as e:
        raise ValueError(f"cannot load checkpoint: {e}") from None
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return path


def open_checkpoint(args: argparse.Namespace, compat: str = "transformers", video: bool = False, max_pixels=None):
    """sources.open_model with the model options `add_model_options` put on the parser; ValueError, one line."""
    from ..sources.open import open_model

    opened = open_model(checkpoint_path(args.checkpoint), args.device, getattr(args, "dtype", None),
                        getattr(args, "quantize", None), getattr(args, "compile", False), compat, max_pixels, video)
    for said in opened.warnings:  # e.g. no preprocessing settings: which defaults are used
        print(f"warning: {said}", file=sys.stderr)
    return opened


def text_positions(ckpt) -> int | None:
    """The checkpoint's text positions, read from its config.json; None where that fails (loading says why)."""
    try:
        return int(json.loads((Path(ckpt) / "config.json").read_text())["text"]["max_positions"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class RunOptions:
    """A `caption`, `vqa` or `video` run with every default filled in (run_options reads one from the command line)."""

    inputs: list[str]  # image or video files, folders, glob patterns, as given
    checkpoint: str  # a model's name (sources.resolve); run_options and run_inputs make it the folder it names
    questions: list[str] = field(default_factory=list)  # empty: one caption per input
    video: bool = False  # each input is a video (a folder is one input: its frames)
    # generation: compat "original" has no max_new_tokens (max_length bounds it) and no sampling
    compat: str = "transformers"
    max_new_tokens: int | None = 20
    max_length: int | None = None  # compat "original": [CLS] + question + answer + [SEP]; None: the model's
    num_beams: int = 1
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: every token
    top_p: float = 1.0  # 1.0: no nucleus cut
    seed: int | None = None  # sampling: each (input, question) draws from its own generator seeded with it
    # running
    device: str = "auto"
    dtype: str = "float32"
    quantize: str | None = None  # "int8": the decoder and LM head in int8 (quantize.py), CPU only
    compile: bool = False  # the decode step compiled: the same ids (generation/compiled.py)
    max_pixels: int | None = None  # None: Pillow's limit
    batch_size: int = 8  # inputs per batch; under torchrun, per process
    # output
    json: bool = False  # one JSON record per line on stdout, not text
    output: str | None = None  # the --output results file: appended to, and the resume point
    recompute: bool = False  # compute again the results `output` holds that were made with other settings
    stream: bool = False  # print words as they are generated
    progress: bool = True


# Sampling options, None when not given, and what they are when --sample is given without them.
SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": None}


def run_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> RunOptions:
    """The batched command's options as RunOptions, defaults filled in, the checkpoint resolved to its folder; a
    usage error (p.error) for a combination that cannot run, before any input is read."""
    original = args.compat == "original"
    if original:  # the original has one search: beams bounded by max_length; no sampling, no streaming
        for given, on in (("--max-new-tokens", args.max_new_tokens), ("--sample", args.sample),
                          ("--stream", args.stream), ("--compile", args.compile)):
            if on:
                p.error(f"{given} cannot be combined with --compat original, which runs the original GIT's beam "
                        "search" + (" (bound the length with --max-length)" if given == "--max-new-tokens" else ""))
    elif args.max_length is not None:
        p.error("--max-length is for --compat original (the original counts [CLS], question and [SEP]); "
                "use --max-new-tokens")
    num_beams = 4 if original and args.num_beams is None else args.num_beams or 1
    max_new_tokens = None if original else 20 if args.max_new_tokens is None else args.max_new_tokens
    given = {name: getattr(args, name) for name in SAMPLING if getattr(args, name) is not None}
    if given.get("seed") is not None and not args.sample:
        p.error("--seed needs --sample: without it decoding is greedy (or beam search) and it would be ignored")
    given.pop("seed", None)
    if why := decoding_error(1 if original else max_new_tokens, num_beams, args.sample, **given, spell=flag):
        p.error(why)
    sampling = {name: default if getattr(args, name) is None else getattr(args, name)
                for name, default in SAMPLING.items()}
    if args.stream and num_beams > 1:
        p.error("--stream needs greedy or --sample decoding: beam search knows its best sequence only at the end")
    if args.stream and args.json:
        p.error("--stream prints text; it cannot be combined with --json (use --output for JSON records)")
    if args.recompute and not args.output:
        p.error("--recompute needs --output: it recomputes results that file holds")
    if any(not q.strip() for q in args.question or []):
        p.error("--question must not be empty")
    if args.checkpoint is None:
        p.error(MISSING)
    try:
        ckpt = checkpoint_path(args.checkpoint)
    except ValueError:  # not a usage error: run_inputs says what is wrong with the checkpoint, as loading would
        ckpt = args.checkpoint
    limit = text_positions(ckpt)
    if original and limit is not None and args.max_length is not None and args.max_length > limit + 1:
        p.error(f"--max-length {args.max_length} cannot be reached: the model has {limit} text positions "
                f"(max_position_embeddings), so at most {limit + 1} tokens with the final [SEP]")
    if not original and limit is not None and (why := room_error(1, max_new_tokens, limit, spell=flag)):
        p.error(why)  # even a bare [CLS] prompt leaves room for only `limit` new tokens
    return RunOptions(
        inputs=args.inputs, checkpoint=str(ckpt), questions=args.question or [],
        video=args.command == "video", compat=args.compat, max_new_tokens=max_new_tokens,
        max_length=args.max_length, num_beams=num_beams, sample=args.sample, **sampling, device=args.device,
        dtype=args.dtype, quantize=args.quantize, compile=args.compile, max_pixels=args.max_pixels,
        batch_size=args.batch_size, json=args.json, output=args.output, recompute=args.recompute, stream=args.stream,
        progress=not args.no_progress)
