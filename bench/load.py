"""What naming a Hugging Face GIT folder costs `git_scratch.load`: the first load (the source files hashed,
converted into the cache, loaded), every later load (found in the cache), and the converted checkpoint loaded
directly, in one run on the same weights.

    python -m bench.load                           # git-base, 3 rounds
    python -m bench.load --shape tiny --rounds 1   # a quick look that it runs

The folder is the bench's random-init one of `--shape` (workloads.checkpoint: transformers' GitForCausalLM
written by save_pretrained, beside our converter's copy). Each round starts from an empty cache
(GIT_SCRATCH_CACHE, a temporary folder), so its first load converts; the later loads and the converted
checkpoint's alternate in order. Every file is warm in the page cache: the timings are the work, not the disk.
Also timed: the name alone on a later load (sources.resolve), and hashing the source files with no digest kept
(sources.cache.source_digest on an empty cache), the part of a first load a later one never repeats.

Results: Markdown on stdout, JSON + Markdown under bench/results/load-<time>.*.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from .machine import report_head, save_report
from .workloads import checkpoint

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = {"first": "load(HF folder), first: hash + convert + load",
        "again": "load(HF folder), again: found in the cache",
        "converted": "load(converted checkpoint)",
        "name": "resolve(HF folder), again: the name alone",
        "hash": "hash the source files, no digest kept"}


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def one_round(hf_dir: Path, our_dir: Path, cache: Path, flip: bool) -> dict:
    """Each row's seconds, from an empty cache at `cache`."""
    import git_scratch
    from git_scratch.sources import resolve
    from git_scratch.sources.cache import source_digest

    os.environ["GIT_SCRATCH_CACHE"] = str(cache)
    times = {"hash": seconds(lambda: source_digest(hf_dir, cache / "hash-only"))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bench's folder has no preprocessing settings: said once per conversion
        times["first"] = seconds(lambda: git_scratch.load(hf_dir))
    later = {"again": lambda: git_scratch.load(hf_dir), "converted": lambda: git_scratch.load(our_dir)}
    for name in (reversed(later) if flip else later):
        times[name] = seconds(later[name])
    times["name"] = seconds(lambda: resolve(hf_dir))
    return times


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="git-base", help="a shape of tests/reference.py SHAPES (git-base, tiny, ...)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    hf_dir, our_dir = checkpoint(args.shape, False, args.out / "checkpoints", log=log)
    size = sum(f.stat().st_size for f in hf_dir.iterdir()) / 2**20
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            rounds.append(one_round(hf_dir, our_dir, Path(tmp) / f"cache{r}", flip=r % 2 == 1))
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.3f}s" for k, v in rounds[-1].items()))
    report = {**report_head(args), "source_mib": round(size, 1), "rounds": rounds}

    cpu = report["machine"]["cpu"]
    md = [f"### load by name: {args.shape} ({size:.1f} MiB of Hugging Face files), {args.rounds} rounds", "",
          f"CPU: {cpu['model']} (family/model {cpu['family_model']}), {report['machine']['threads']} threads, "
          f"torch {report['machine']['torch']}", "",
          "| step | median s | min s |", "|---|---:|---:|"]
    for key, title in ROWS.items():
        values = [r[key] for r in rounds]
        md.append(f"| {title} | {statistics.median(values):.3f} | {min(values):.3f} |")
    text = "\n".join(md)
    print(text)
    log(f"saved {save_report(args.out, 'load', report, text)}")


if __name__ == "__main__":
    main()
