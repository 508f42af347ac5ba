"""An ONNX export on onnxruntime against git_scratch (torch) and transformers, on the same weights, in one run.

    python -m bench.onnx                              # git-base: export once (kept), then alternating runs
    python -m bench.onnx --shape words --repeats 2    # a quick look that it runs (tiny, real vocabulary)

The checkpoint is the bench's random-init one of `--shape` (workloads.checkpoint, init std 0.1), exported by
export/onnx.py into <out>/checkpoints/<shape>/onnx (kept; exported again when the checkpoint or the export code
is newer). Each
workload runs on the three sides in turn, alternating the order, after a warm-up; the table gives the median
(min-max) seconds, each side's ratio to transformers, and whether onnxruntime's and transformers' ids equal
git_scratch's. Generation forces its length (min_new_tokens = max_new_tokens) as bench/run.py does, and the
decode step is (greedy 40 new - greedy 20 new) / 20 from the minima, so no side's internals are timed alone.
onnxruntime runs with as many intra-op threads as torch (`--threads`).

Results: Markdown on stdout, JSON + Markdown under bench/results/onnx-<time>.*.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from .machine import OtherLoad, report_head, save_report
from .workloads import checkpoint, gen_ours, gen_theirs, load_ours, load_theirs, pixels, prompt, same_ids

RESULTS = Path(__file__).resolve().parent / "results"
SIDES = ("git_scratch", "onnxruntime", "transformers")


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def workloads(cfg) -> dict:
    """name -> (title, inputs, new tokens, beams): what each side generates."""
    return {
        "greedy-1": ("caption, greedy, 1 image, 20 new", {"px": pixels(cfg, 1), "ids": prompt(cfg, 1, 1)}, 20, 1),
        "greedy-1-40": ("caption, greedy, 1 image, 40 new", {"px": pixels(cfg, 1), "ids": prompt(cfg, 1, 1)}, 40, 1),
        "beam4-1": ("caption, beam 4, 1 image, 20 new", {"px": pixels(cfg, 1), "ids": prompt(cfg, 1, 1)}, 20, 4),
        "vqa": ("VQA, 12-token prompt + 10 new, 1 image", {"px": pixels(cfg, 1), "ids": prompt(cfg, 1, 12)}, 10, 1),
    }


def exported(our_dir: Path, out: Path) -> tuple[float | None, float | None]:
    """Export `our_dir` into `out` unless an export newer than its weights and the exporting code is there:
    (seconds, max |logit difference| from torch), None where the export was kept. (An older export still runs,
    but without what later graphs.py changes made faster.)"""
    from git_scratch.export import graphs, onnx
    from git_scratch.export.onnx import compare, export_checkpoint
    from git_scratch.export.runtime import is_export

    sources = (our_dir / "model.safetensors", Path(graphs.__file__), Path(onnx.__file__))
    if is_export(out) and out.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return None, None
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    model = export_checkpoint(our_dir, out, log=lambda line: log("  " + line))
    seconds = time.perf_counter() - t0
    return seconds, compare(model, out)[0]


def run(args) -> dict:
    from git_scratch.export.runtime import OnnxGIT

    hf_dir, our_dir = checkpoint(args.shape, False, args.out / "checkpoints", log=log)
    export_s, diff = exported(our_dir, our_dir.parent / "onnx")
    models = {"git_scratch": load_ours(our_dir),
              "onnxruntime": OnnxGIT(our_dir.parent / "onnx", threads=args.threads, spinning=args.spinning),
              "transformers": load_theirs(hf_dir)}
    report = {"export_seconds": export_s, "max_logit_diff": diff, "workloads": {}}
    for name, (title, inputs, new, beams) in workloads(models["git_scratch"].config).items():
        log(f"{name}: {title}")
        times, first = {s: [] for s in SIDES}, {}
        for r in range(args.warmup + args.repeats):
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                gen = gen_theirs if side == "transformers" else gen_ours
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = gen(models[side], inputs["px"], inputs["ids"], new, beams)
                dt = time.perf_counter() - t0
                first.setdefault(side, out)
                if r >= args.warmup:
                    times[side].append(dt)
                    log(f"    {side:12s} {dt:8.3f} s")
        row = {"title": title}
        for side in SIDES:
            ts = times[side]
            row[side] = {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "runs": ts}
        for side in ("onnxruntime", "transformers"):
            row[f"{side}_ids"] = same_ids(first[side], first["git_scratch"])[1]
        report["workloads"][name] = row
    w = report["workloads"]
    report["decode_step_ms"] = {s: (w["greedy-1-40"][s]["min"] - w["greedy-1"][s]["min"]) / 20 * 1e3 for s in SIDES}
    return report


def markdown(report: dict) -> str:
    m, a = report["machine"], report["args"]
    cpu = m["cpu"]
    other = report.get("other_load")
    lines = [
        f"Machine: {cpu['model']}{' (family/model ' + cpu['family_model'] + ')' if cpu.get('family_model') else ''}, "
        f"{m['cores']} cores, {m['threads']} torch threads (onnxruntime: as many), {m['memory_gib']} GiB RAM, "
        f"flags {' '.join(cpu['flags']) or '—'}; torch {m['torch']}, transformers {m['transformers']}, onnxruntime "
        f"{report['onnxruntime']}, Python {m['python']}. {report['date']}. Other processes used "
        f"{'n/a' if other is None else f'{100 * other:.0f}%'} of the CPU during the run.",
        "",
        f"Shape {a['shape']} (random init), float32 on every side; onnxruntime's threads "
        f"{'spin' if a['spinning'] else 'do not spin'} between calls. Seconds: median (min–max) of {a['repeats']} "
        f"alternating runs after {a['warmup']} warm-up; ratio = side / transformers. Export: "
        + ("kept from an earlier run" if report["export_seconds"] is None else
           f"{report['export_seconds']:.0f} s, max |logit diff| vs torch {report['max_logit_diff']:.1e}") + ".",
        "",
        "| workload | git_scratch s | onnxruntime s | transformers s | git_scratch ratio | onnxruntime ratio "
        "| onnxruntime ids | transformers ids |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def t(s):
        return f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})"

    for row in report["workloads"].values():
        ref = row["transformers"]["median"]
        lines.append(f"| {row['title']} | {t(row['git_scratch'])} | {t(row['onnxruntime'])} | {t(row['transformers'])} "
                     f"| {row['git_scratch']['median'] / ref:.2f} | {row['onnxruntime']['median'] / ref:.2f} "
                     f"| {row['onnxruntime_ids']} | {row['transformers_ids']} |")
    d = report["decode_step_ms"]
    lines.append(f"| decode step, 1 row (40 new − 20 new) / 20, ms | {d['git_scratch']:.2f} | {d['onnxruntime']:.2f} "
                 f"| {d['transformers']:.2f} | {d['git_scratch'] / d['transformers']:.2f} "
                 f"| {d['onnxruntime'] / d['transformers']:.2f} | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import onnxruntime

    p = argparse.ArgumentParser(prog="python -m bench.onnx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="git-base", help="a tests/reference.py shape with a real vocabulary (default git-base; words: tiny)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and onnxruntime threads")
    p.add_argument("--spinning", action="store_true",
                   help="let onnxruntime's threads spin between calls (OnnxGIT's default: off)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    report = {**report_head(a), "onnxruntime": onnxruntime.__version__}
    load = OtherLoad()
    report.update(run(a))
    report["other_load"] = load.fraction()
    md = markdown(report)
    save_report(a.out, "onnx", report, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
