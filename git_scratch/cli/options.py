"""RunOptions: what a batched run (`caption`, `vqa`, `video`) is asked, its defaults filled in, and `run_options`,
the one place that reads them from the parsed command line and refuses a combination that cannot run.

batch.py (Runner, load_checkpoint, run_inputs, plan) and results.py (run_settings) take RunOptions, so a
batched run can be made and tested without a command line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..load import checkpoint_dir


@dataclass
class RunOptions:
    """A `caption`, `vqa` or `video` run with every default filled in (run_options reads one from the command line)."""

    inputs: list[str]  # image or video files, folders, glob patterns, as given
    checkpoint: str  # a converted git_scratch checkpoint directory
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
    """The batched command's options as RunOptions, defaults filled in; a usage error (p.error) for a
    combination that cannot run, before any input is read."""
    original = args.compat == "original"
    if original:  # the original has one search: beams bounded by max_length; no sampling, no streaming
        for flag, given in (("--max-new-tokens", args.max_new_tokens), ("--sample", args.sample),
                            ("--stream", args.stream)):
            if given:
                p.error(f"{flag} cannot be combined with --compat original, which runs the original GIT's beam "
                        "search" + (" (bound the length with --max-length)" if flag == "--max-new-tokens" else ""))
    elif args.max_length is not None:
        p.error("--max-length is for --compat original (the original counts [CLS], question and [SEP]); "
                "use --max-new-tokens")
    num_beams = args.num_beams or (4 if original else 1)
    max_new_tokens = None if original else args.max_new_tokens or 20
    if args.stream and num_beams > 1:
        p.error("--stream needs greedy or --sample decoding: beam search knows its best sequence only at the end")
    if args.stream and args.json:
        p.error("--stream prints text; it cannot be combined with --json (use --output for JSON records)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        p.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 0:
        p.error(f"--top-k must be >= 0, got {args.top_k}")
    given = [f"--{name.replace('_', '-')}" for name in SAMPLING if getattr(args, name) is not None]
    if given and not args.sample:
        one = len(given) == 1
        p.error(f"{', '.join(given)} {'needs' if one else 'need'} --sample: without it decoding is greedy (or beam "
                f"search) and {'it' if one else 'they'} would be ignored")
    sampling = {name: default if getattr(args, name) is None else getattr(args, name)
                for name, default in SAMPLING.items()}
    if args.compile and original:
        p.error("--compile compiles transformers' decoding; --compat original runs the original's beam search eagerly")
    if args.sample and num_beams > 1:
        p.error("--sample and --num-beams > 1 cannot be combined")
    if args.recompute and not args.output:
        p.error("--recompute needs --output: it recomputes results that file holds")
    if any(not q.strip() for q in args.question or []):
        p.error("--question must not be empty")
    try:
        ckpt = checkpoint_dir(args.checkpoint)  # a training run directory or its `latest`: the checkpoint named
    except ValueError as e:
        p.error(f"--checkpoint: {e}")
    if ckpt.is_file():
        p.error(f"--checkpoint {ckpt} is a file; pass the checkpoint directory, the folder that holds config.json "
                "and model.safetensors")
    limit = text_positions(ckpt)
    if original and limit is not None and args.max_length is not None and args.max_length > limit + 1:
        p.error(f"--max-length {args.max_length} cannot be reached: {ckpt} has {limit} text positions "
                f"(max_position_embeddings), so at most {limit + 1} tokens with the final [SEP]")
    # even a bare [CLS] prompt leaves room for only `limit` new tokens
    if not original and limit is not None and max_new_tokens > limit:
        p.error(f"--max-new-tokens {max_new_tokens} cannot be reached: {ckpt} has {limit} text positions "
                f"(max_position_embeddings), so at most {limit} new tokens after [CLS], fewer after a question")
    return RunOptions(
        inputs=args.inputs, checkpoint=str(ckpt), questions=args.question or [],
        video=args.command == "video", compat=args.compat, max_new_tokens=max_new_tokens,
        max_length=args.max_length, num_beams=num_beams, sample=args.sample, **sampling, device=args.device,
        dtype=args.dtype, quantize=args.quantize, compile=args.compile, max_pixels=args.max_pixels, batch_size=args.batch_size, json=args.json,
        output=args.output, recompute=args.recompute, stream=args.stream, progress=not args.no_progress)


def text_positions(ckpt: Path) -> int | None:
    """The checkpoint's text positions, read from its config.json; None where that fails (loading says why)."""
    try:
        return int(json.loads((ckpt / "config.json").read_text())["text"]["max_positions"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
