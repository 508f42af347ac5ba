"""Time git_scratch against transformers on the same weights and inputs; see `python -m bench --help`.

Method, per shape: build (once, cached) a random-init transformers checkpoint and our conversion of
it; load both models in this process; for each workload run each side `warmup` times, then `repeats`
times alternating which side goes first, so drifts in machine speed hit both sides alike. The first
output of each side is compared (token ids must be identical). Peak memory is measured in fresh child
processes, one per side and workload (see memory.py). Results: a Markdown table on stdout, and
bench/results/<time>.json / .md (plus latest.json / latest.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import git_scratch.fast

from .device import DTYPES as DEVICE_DTYPES
from .device import main as device_main
from .machine import OtherLoad, bandwidth_gbs, linear_seconds, machine_info, matmul_gflops, roofline
from .ties import explain, vision_against_exact
from .modes import modes_markdown, rows_agreement, takes_modes
from .workloads import MODES, QUICK, WORKLOADS, checkpoint, load_mode, load_ours, load_theirs

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = ("git-base", "git-large")

EXAMPLES = """examples:
  python -m bench --quick                       # git-base, 6 short workloads, 2 repeats (~2 min)
  python -m bench                               # everything: git-base and git-large, all workloads (long)
  python -m bench --shapes git-base --workloads greedy-1 beam4-1 --repeats 5
  python -m bench --list                        # the workloads and their targets
  python -m bench --no-memory --no-roofline     # timings only
  python -m bench --quick --ours-dtype bfloat16  # experiment: our side in bf16 (ids may differ: does not count)
  python -m bench --quick --modes int8 bfloat16  # git_scratch's int8 and bf16 modes as columns beside float32

workloads: """ + ", ".join(WORKLOADS)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def summary(ts: list[float]) -> dict:
    return {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "runs": ts}


def time_pair(w, models: dict, inputs: dict, warmup: int, repeats: int, modes=()) -> dict:
    """Alternating timed runs of both sides, and of git_scratch in each of `modes` (workloads.MODES: a side of
    its own, models[mode], timed in the same alternation); the first output of each is kept for the comparisons."""
    fns = {"ours": w.ours, **{m: w.ours for m in modes}, "theirs": w.theirs}
    sides = list(fns)
    first, times = {}, {side: [] for side in sides}

    def run(side):
        t0 = time.perf_counter()
        out = fns[side](models[side], **inputs)
        dt = time.perf_counter() - t0
        first.setdefault(side, out)
        return dt

    ctx = contextlib.nullcontext() if w.grad else torch.inference_mode()
    with ctx:
        for side in sides:
            for _ in range(warmup):
                run(side)
        for r in range(repeats):
            for side in sides if r % 2 == 0 else sides[::-1]:
                times[side].append(run(side))
                log(f"    {side:8s} {times[side][-1]:8.3f} s")
    if w.exact:
        ok, detail = vision_against_exact(models, inputs, first["ours"], first["theirs"])
    else:
        ok, detail = w.same(first["ours"], first["theirs"])
    if not ok and w.gen:  # ids differ: a real difference, or a near-tie decided by fp32 rounding? (ties.py)
        ok, detail = explain(models, inputs, first["ours"], first["theirs"], w.gen["new"], w.gen.get("beams", 1))
    res = {side: summary(times[side]) for side in ("ours", "theirs")}
    res["ratio"] = res["ours"]["median"] / res["theirs"]["median"]
    res["same"], res["same_detail"] = ok, detail
    if modes:
        res["modes"] = {m: {**summary(times[m]), "ratio": statistics.median(times[m]) / res["theirs"]["median"],
                            **rows_agreement(first[m], first["ours"])} for m in modes}
    return res


def peak_memory(hf_dir: Path, our_dir: Path, workload: str, threads: int, ours_dtype: str, modes=()) -> dict:
    """{"ours": ..., "theirs": ..., and each of `modes`: ...}, each from a child process (memory.py)."""
    out = {}
    for side in ("ours", "theirs", *modes):
        cmd = [sys.executable, "-m", "bench.memory", str(hf_dir), str(our_dir), workload,
               side if side in ("ours", "theirs") else "ours", "--threads", str(threads), "--ours-dtype", ours_dtype]
        if side not in ("ours", "theirs"):
            cmd += ["--mode", side]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        if p.returncode:
            log(f"    memory child failed ({side}): {p.stderr.strip().splitlines()[-1:]}")
            out[side] = None
        else:
            out[side] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def vision_flops(model, cfg) -> int:
    """FLOPs of the vision encoder on one image (one frame), counted by torch (matmuls, the conv, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .workloads import pixels

    px = pixels(cfg, 1)
    # NB: with autograd on, fast.Linear takes its plain F.linear path, which the counter knows (it does
    # not count oneDNN's op); the FLOPs are the same either way
    with FlopCounterMode(display=False) as fc, torch.enable_grad():
        model.vision(px[:, 0] if px.ndim == 5 else px)  # one frame of a video
    return fc.get_total_flops()


def decode_bytes(cfg, n_text: int) -> int:
    """Bytes one greedy decode step must read (fp32): every decoder weight, the LM head, the K/V cache."""
    D, Dm, layers = cfg.text.dim, cfg.text.mlp_dim, cfg.text.n_layers
    per_block = 4 * D * D + 2 * D * Dm  # attention q/k/v/out + MLP
    kv = 2 * (cfg.n_img_tokens + n_text) * D  # keys and values attended to, per layer
    return 4 * (layers * (per_block + kv) + D * cfg.text.vocab_size)


def floor_seconds(cfg, gen: dict, roof: dict, vision_gflop: float) -> float:
    """The least time this machine needs for a generation workload done our way, in fp32.

    Each image encoded once (FLOPs at peak matmul rate); its tokens through the decoder once (the last
    block: keys/values only); then one pass per new token (the prompt's pass counted as one), each as
    slow as the slower of reading every weight and the K/V cache at the measured bandwidth and doing
    its FLOPs at peak. Nothing real gets there: it says which targets are out of reach.
    """
    t, n_img = cfg.text, gen["images"]
    D, Dm, layers, V = t.dim, t.mlp_dim, t.n_layers, t.vocab_size
    N = cfg.n_img_tokens
    block = 4 * D * D + 2 * D * Dm  # weights of one decoder block (multiply-adds per token)
    peak, bw = roof["matmul_gflops_fp32_peak"] * 1e9, roof["bandwidth_gbs"]["read"] * 1e9
    frames = cfg.n_frames or 1
    encode = n_img * frames * vision_gflop * 1e9 + n_img * 2 * N * ((layers - 1) * block + 2 * D * D)
    rows = n_img * gen["rows"]
    slots = gen["prompt"] + gen["new"]
    step_bytes = 4 * (layers * block + D * V + layers * 2 * D * (n_img * N + rows * slots))
    step_flops = 2 * rows * (layers * block + D * V)
    return encode / peak + gen["new"] * max(step_bytes / bw, step_flops / peak)


def limits(shape_results: dict, cfg, roof: dict, vision_gflop: float) -> dict:
    """How close the vision encoder and the decode step come to this machine's matmul rate and bandwidth.

    The rates are best-of measurements, so they are held against each side's fastest run (min), not the
    median: a shared machine's noise would otherwise count as distance from the floor.
    """
    out = {}
    vis = shape_results.get("vision")
    if vis:
        flops = vision_gflop * 1e9
        v = cfg.vision
        rate_1 = matmul_gflops(v.n_tokens, v.dim, v.mlp_dim)  # the encoder's own MLP matmul, 1 image
        # the encoder's linear layers alone, each shape timed as torch/MKL runs it (q, k, v, out, fc1, fc2)
        shapes = [(v.dim, v.dim)] * 4 + [(v.dim, v.mlp_dim), (v.mlp_dim, v.dim)]
        linears = v.n_layers * sum(linear_seconds(v.n_tokens, k, n) for k, n in shapes)
        floor = flops / (roof["matmul_gflops_fp32_peak"] * 1e9)
        out["vision"] = {
            "gflop": flops / 1e9,
            "floor_s_at_peak": floor,
            "fc1_gflops_1_image": rate_1,
            "linears_alone_s": linears,
            "floor_s_at_1_image_shape": flops / (rate_1 * 1e9),
            "ours_s": vis["ours"]["min"],
            "theirs_s": vis["theirs"]["min"],
            "ours_over_floor": vis["ours"]["min"] / floor,
            "theirs_over_floor": vis["theirs"]["min"] / floor,
            "ours_gflops": flops / vis["ours"]["min"] / 1e9,
        }
    g20, g40 = shape_results.get("greedy-1"), shape_results.get("greedy-1-40")
    if g20 and g40:
        # per-step cost without knowing either side's internals: 20 more forced tokens, divided by 20
        nbytes = decode_bytes(cfg, n_text=30)
        # streaming rate over a buffer the size of what one step reads (the caches may hold part of it)
        bw = bandwidth_gbs(mib=max(64, round(nbytes / 2**20)))["read"]
        floor = nbytes / (bw * 1e9)
        step = {s: (g40[s]["min"] - g20[s]["min"]) / 20 for s in ("ours", "theirs")}
        out["decode_step"] = {
            "mb_read": nbytes / 1e6,
            "read_gbs": bw,
            "floor_ms": floor * 1e3,
            "ours_ms": step["ours"] * 1e3,
            "theirs_ms": step["theirs"] * 1e3,
            "ours_over_floor": step["ours"] / floor,
            "theirs_over_floor": step["theirs"] / floor,
        }
    return out


def run_shape(shape: str, args, roof: dict | None, out: dict) -> None:
    """Fills `out` as it goes ({"workloads": ..., "limits": ...}), so a crash keeps what was measured."""
    res = out["workloads"] = {}
    names = [w for w in args.workloads if not WORKLOADS[w].video]
    videos = [w for w in args.workloads if WORKLOADS[w].video]
    lim = {}
    for video, group in ((False, names), (True, videos)):
        if not group:
            continue
        hf_dir, our_dir = checkpoint(shape, video, args.out / "checkpoints", rebuild=args.rebuild, log=log)
        log(f"loading {shape}{' (video)' if video else ''} ...")
        models = {"ours": load_ours(our_dir, args.ours_dtype), "theirs": load_theirs(hf_dir)}
        models.update({m: load_mode(our_dir, m) for m in args.modes})
        cfg = models["ours"].config
        vision_gflop = vision_flops(models["ours"], cfg) / 1e9 if roof is not None else None
        for name in group:
            w = WORKLOADS[name]
            log(f"[{shape}] {name}: {w.title}")
            inputs = w.inputs(cfg)
            load = OtherLoad()
            modes = args.modes if takes_modes(w) else ()
            r = time_pair(w, models, inputs, args.warmup, args.repeats, modes)
            r["other_load"] = load.fraction()
            log(f"    ratio {r['ratio']:.3f}   outputs: {r['same_detail']}   other processes' CPU: {_pct(r['other_load'])}")
            for m, mr in r.get("modes", {}).items():
                log(f"    {m}: ratio {mr['ratio']:.3f}, {mr['detail']}")
            if args.memory:
                r["memory"] = peak_memory(hf_dir, our_dir, name, args.threads, args.ours_dtype, modes)
                log(f"    peak memory: {r['memory']}")
            res[name] = r
            if roof is not None and w.gen:
                r["floor_s"] = floor_seconds(cfg, w.gen, roof, vision_gflop)
                r["floor_ratio"] = r["floor_s"] / r["theirs"]["median"]
        if not video and roof is not None:
            lim = limits(res, cfg, roof, vision_gflop)
        del models
    out["limits"] = lim


# ---------------------------------------------------------------- report
def _pct(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:.0f}%"


def _floor(r: dict) -> str:
    return f"{r['floor_s']:.3f} ({r['floor_ratio']:.2f})" if "floor_s" in r else "—"


def _t(s: dict) -> str:
    return f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})"


def _mem(m: dict | None) -> str:
    if not m or not m.get("ours") or not m.get("theirs"):
        return "—"
    o, t = m["ours"]["peak_mib"], m["theirs"]["peak_mib"]
    return f"{o:.0f} / {t:.0f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    cpu = m["cpu"]
    lines = [
        f"Machine: {cpu['model']}{' (family/model ' + cpu['family_model'] + ')' if cpu.get('family_model') else ''}, "
        f"{m['cores']} cores, {m['threads']} torch threads, {m['memory_gib']} GiB RAM, "
        f"flags {' '.join(cpu['flags']) or '—'}; GPU: {m['gpu'] or 'none'}; torch {m['torch']}, "
        f"transformers {m['transformers']}, Python {m['python']}. {report['date']}. Other processes used "
        f"{_pct(report.get('other_load'))} of the CPU during the run.",
    ]
    roof = report.get("roofline")
    if roof:
        mm = ", ".join(f"{k}: {v:.0f}" for k, v in roof["matmul_gflops_fp32"].items())
        bw = roof["bandwidth_gbs"]
        lines.append(
            f"Measured limits: fp32 matmul GFLOP/s ({mm}); bf16 square 2048: "
            f"{roof.get('matmul_gflops_bf16_square', float('nan')):.0f}; memory bandwidth "
            f"{bw['read']:.1f} GB/s read (GEMV over {bw['buffer_mib']} MiB), {bw['copy']:.1f} GB/s copy."
        )
    lines += [
        "",
        f"Times in seconds: median (min–max) of {report['args']['repeats']} alternating runs after "
        f"{report['args']['warmup']} warm-up; ratio = git_scratch median / transformers median; "
        f"git_scratch in {report['args']['ours_dtype']} (CPU linear route: {report['args']['linear_route']}), "
        "transformers in float32. "
        "'floor': the least time this machine's measured matmul rate and bandwidth allow for the work done "
        "our way (each image encoded once, one weight read per new token; run.floor_seconds), and that "
        "floor as a ratio to transformers: a target below it cannot be met in float32 here. "
        "'other load': the share of the CPU that other processes used meanwhile (above a few % the "
        "times are disturbed).",
        "",
        "| shape | workload | git_scratch s | transformers s | ratio | target | floor s (ratio) | outputs "
        "| peak MiB ours / theirs | other load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, sr in report["shapes"].items():
        for name, r in sr.get("workloads", {}).items():
            w = WORKLOADS[name]
            tgt = "—" if w.target is None else f"≤ {w.target}" + (" ✅" if r["ratio"] <= w.target and r["same"] else " ❌")
            same = ("✅ " if r["same"] else "❌ ") + r["same_detail"]
            lines.append(
                f"| {shape} | {w.title} | {_t(r['ours'])} | {_t(r['theirs'])} | {r['ratio']:.3f} | {tgt} | {_floor(r)} "
                f"| {same} "
                f"| {_mem(r.get('memory'))} | {_pct(r.get('other_load'))} |"
            )
    lim_rows = [(s, sr["limits"]) for s, sr in report["shapes"].items() if sr.get("limits")]
    if lim_rows:
        lines += [
            "",
            "Limits (fastest run of each side against the measured rates):",
            "",
            "| shape | limit | floor | git_scratch | transformers |",
            "|---|---|---|---|---|",
        ]
        for shape, lim in lim_rows:
            if "vision" in lim:
                v = lim["vision"]
                ok = "✅" if v["ours_over_floor"] <= 1.3 else "❌"
                lines.append(
                    f"| {shape} | vision encoder, 1 image: {v['gflop']:.1f} GFLOP (target ≤ 1.3× floor {ok}) "
                    f"| {v['floor_s_at_peak']*1e3:.0f} ms at peak ({v['floor_s_at_1_image_shape']*1e3:.0f} ms at the "
                    f"1-image matmul shape; its linear layers alone, timed shape by shape: "
                    f"{v['linears_alone_s']*1e3:.0f} ms) | {v['ours_s']*1e3:.0f} ms = {v['ours_over_floor']:.2f}× floor "
                    f"({v['ours_gflops']:.0f} GFLOP/s) | {v['theirs_s']*1e3:.0f} ms = {v['theirs_over_floor']:.2f}× |"
                )
            if "decode_step" in lim:
                d = lim["decode_step"]
                lines.append(
                    f"| {shape} | decode step, 1 image: {d['mb_read']:.0f} MB read (weights + K/V) "
                    f"| {d['floor_ms']:.1f} ms at {d['read_gbs']:.1f} GB/s | {d['ours_ms']:.1f} ms = {d['ours_over_floor']:.2f}× "
                    f"| {d['theirs_ms']:.1f} ms = {d['theirs_over_floor']:.2f}× |"
                )
    return "\n".join(lines) + "\n" + modes_markdown(report)


def parse(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Time git_scratch against transformers on identical random-init weights and inputs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES + ("tiny",),
                   help="git-base, git-large (tiny: a test shape, to try --device quickly)")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS), metavar="W")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per side first (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--quick", action="store_true", help=f"git-base, {', '.join(QUICK)}; 2 repeats")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory child processes")
    p.add_argument("--no-roofline", dest="roofline", action="store_false", help="skip measuring matmul/bandwidth")
    p.add_argument("--ours-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="git_scratch's dtype (transformers stays float32); anything but float32 is an experiment "
                   "whose ids usually differ, and then does not count")
    p.add_argument("--modes", nargs="*", default=[], choices=list(MODES),
                   help="git_scratch in these modes too, each timed beside float32 in the same alternation: int8 "
                   "(load(quantize='int8')), int8-bf16vision (the same, vision in bfloat16), bfloat16 "
                   "(load(dtype='bfloat16')); their ids are reported as rows identical to float32 git_scratch's "
                   "(bench/modes.py; agreement at scale: python -m bench.quantize)")
    p.add_argument("--linear", default="auto", choices=["auto", "onednn", "mkl"],
                   help="git_scratch's CPU linear route for inference (fast.Linear): auto = oneDNN for the rows "
                   "fast.ONEDNN_ROWS gives this CPU (AVX-512: 4-512, AVX2: 1-64), where it was measured faster; "
                   "onednn (1-512 rows) / mkl (none) force one, to measure both")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached random-init checkpoints")
    p.add_argument("--out", type=Path, default=RESULTS, help="results and checkpoint cache (default bench/results)")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    d = p.add_argument_group("--device: generation and training on one device (bench/device.py), eager and "
                             "compiled git_scratch beside transformers; CUDA-only parts skipped without CUDA")
    d.add_argument("--device", default=None, help="cuda or cpu: run bench/device.py's workloads there instead")
    d.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"], choices=list(DEVICE_DTYPES))
    d.add_argument("--batches", nargs="+", type=int, default=[1, 64], help="greedy caption batches (default 1 64)")
    d.add_argument("--new-tokens", type=int, default=20, help="new tokens per caption (default 20)")
    d.add_argument("--extra-steps", type=int, default=80, help="decode step = (time of new + extra - time of new) / extra")
    d.add_argument("--beam-batch", type=int, default=64, help="images for beam 4 (default 64)")
    d.add_argument("--train-batch", type=int, default=32, help="training step batch (default 32)")
    d.add_argument("--shapes-steps", type=int, default=30, help="shapes training steps timed (default 30)")
    d.add_argument("--demo-images", type=int, default=200, help="demo model images for bf16 agreement (default 200)")
    d.add_argument("--device-workloads", dest="device_workloads", nargs="+", default=["beam", "train", "shapes-train"],
                   choices=["beam", "train", "shapes-train"], help="besides greedy and the decode step")
    a = p.parse_args(argv)
    if a.quick:
        a.shapes, a.workloads, a.repeats = ["git-base"], list(QUICK), 2
    return a


def main(argv=None) -> int:
    args = parse(argv)
    if args.device is not None:
        args.workloads = args.device_workloads
        return device_main(args, log)
    if args.list:
        for name, w in WORKLOADS.items():
            print(f"{name:16s} {w.title}" + (f"   (target ratio ≤ {w.target})" if w.target else ""))
        return 0
    torch.set_num_threads(args.threads)
    if args.linear != "auto":
        git_scratch.fast.ONEDNN_ROWS = (1, 512) if args.linear == "onednn" else None
    rows = git_scratch.fast.ONEDNN_ROWS
    args.linear_route = f"onednn for {rows[0]}-{rows[1]} rows" if rows else "mkl"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "shapes": {},
    }
    if args.roofline:
        log("measuring matmul throughput and memory bandwidth ...")
        report["roofline"] = roofline()
        log(f"    {report['roofline']}")
    load = OtherLoad()
    try:
        for shape in args.shapes:
            run_shape(shape, args, report.get("roofline"), report["shapes"].setdefault(shape, {}))
    finally:  # an error or ^C still leaves the results measured so far
        report["other_load"] = load.fraction()
        md = markdown(report)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for name in (stamp, "latest"):
            (args.out / f"{name}.json").write_text(json.dumps(report, indent=1))
            (args.out / f"{name}.md").write_text(md)
        print(md)
        log(f"wrote {args.out / (stamp + '.json')} and .md")
    return 0
