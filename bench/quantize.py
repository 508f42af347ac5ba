"""git_scratch's int8 and bfloat16 modes against float32: agreement measured, and the kernels behind the choice.

    python -m bench.quantize                      # demo 1,000 seeds + git-base and git-large, int8 and bfloat16
    python -m bench.quantize --n 100 --shapes git-base --images 4     # a quick look
    python -m bench.quantize --parts kernels      # the LM-head kernels quantize.py chose among, timed
    python -m bench.quantize --parts breakdown    # where a git-base greedy caption's time goes, per mode

demo     the shipped shapes model (data/shapes.CHECKPOINT) on `--n` fresh seeds from 2,000,000,000, counted as
         `git-scratch demo --json` counts (evaluation.demo predict / score, batches of 64 images): exact caption
         and answer accuracy in each mode beside float32's, and the share of captions / answers whose text is
         float32's.
random   git-base and git-large at init std 0.1 (the bench's checkpoints, workloads.checkpoint): `--images` random
         images, each with a random text of `--tokens` word ids, decoded by every mode with that text forced
         (teacher forcing over the KV cache, one image a call as a batch-1 caption runs): the share of steps whose
         top-1 token is float32's, and the logits' max / mean |error| against float64 (our model in double)
         beside float32's own. Random texts, not the model's own captions, whose one repeated token would make one
         near-tie twenty steps; even so a random model's steps about one image much resemble each other (its
         image tokens outweigh the text), so the images whose every step agrees are counted too, and the median
         gap between the two best logits (float64) says how close the calls are.
breakdown  one git-base image, 20 new tokens, per mode: the vision pass, the image's pass through the decoder
         (prefill_image), the [CLS] prompt, one decode step, and the whole greedy caption; medians.
kernels  the git-base LM head (30,522 x 768) at 1 and 4 rows: float32, bfloat16, quantize.Int8Linear (fbgemm),
         torchao 0.18's int8 configs where torchao is installed, aten._weight_int8pack_mm; alternating, median.

Results: Markdown on stdout, JSON + Markdown under bench/results/quantize-<time>.*; how long each part took.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .machine import report_head, save_report
from .workloads import MODES, checkpoint, load_mode, load_ours, pixels, prompt

RESULTS = Path(__file__).resolve().parent / "results"
FRESH = 2 * 10**9  # evaluation.demo.FRESH: past every training and held-out seed


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- demo: exact captions and answers
def demo_agreement(n: int, modes: list[str]) -> dict:
    from git_scratch.data import shapes
    from git_scratch.evaluation.demo import predict, score
    from git_scratch.load import load
    from git_scratch.preprocessing.processor import Processor

    processor = Processor.from_pretrained(shapes.CHECKPOINT)
    seeds = range(FRESH, FRESH + n)
    out, ref = {}, None
    for mode in ["float32", *modes]:
        model = load(shapes.CHECKPOINT, device="cpu", **MODES.get(mode, {}))
        t0 = time.perf_counter()
        recs = predict(model, processor, seeds)
        s = score(recs)
        row = {"captions": s["captions"], "answers": s["answers"], "n_captions": s["n_captions"],
               "n_answers": s["n_answers"], "seconds": time.perf_counter() - t0}
        if ref is None:
            ref = recs
        else:  # same seeds, same order: record i is the same caption or question in every mode
            for kind, is_q in (("captions", False), ("answers", True)):
                pairs = [(a, b) for a, b in zip(recs, ref) if (a["question"] is not None) == is_q]
                row[f"{kind}_as_float32"] = sum(a["text"] == b["text"] for a, b in pairs) / len(pairs)
        out[mode] = row
        log(f"  demo {mode}: {row}")
    return out


# ---------------------------------------------------------------- random shapes: teacher-forced top-1
@torch.inference_mode()
def forced_logits(model, image: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """image (1, N, D), seq (1, 1 + T) = [CLS] + T tokens -> (T, V) float64 logits of each step, decoding exactly
    as generate does (prefill, then one decode_step per token), but fed `seq`'s tokens, not the model's own."""
    from git_scratch.generation.decoders import decoder

    T = seq.shape[1] - 1
    dec = decoder(model, image, 1, T)
    steps = [dec.prefill(seq[:, :1], torch.ones(1, dtype=torch.long))]
    for t in range(1, T):
        steps.append(dec.decode_step(seq[:, t], torch.tensor([t])))
    return torch.cat(steps).double()


def random_agreement(shape: str, modes: list[str], n_images: int, tokens: int, root: Path) -> dict:
    _, our_dir = checkpoint(shape, False, root, log=log)
    f32 = load_ours(our_dir)
    f64 = copy.deepcopy(f32).double()
    px = pixels(f32.config, n_images, seed=7)
    seqs = prompt(f32.config, n_images, 1 + tokens, seed=8)  # (M, 1 + T): [CLS] + random word ids
    models = {"float32": f32, **{m: load_mode(our_dir, m) for m in modes}}
    logits = {side: [] for side in ("float64", *models)}
    for i in range(n_images):
        with torch.inference_mode():
            logits["float64"].append(forced_logits(f64, f64.encode_image(px[i:i + 1].double()), seqs[i:i + 1]))
            for side, m in models.items():
                logits[side].append(forced_logits(m, m.encode_image(px[i:i + 1].to(m.dtype)), seqs[i:i + 1]))
    del f64
    cat = {side: torch.cat(v) for side, v in logits.items()}  # (M * T, V)
    exact, top = cat["float64"], cat["float32"].argmax(-1)
    best2 = exact.topk(2, dim=-1).values
    out = {"images": n_images, "steps": len(top), "logits_abs_mean": float(exact.abs().mean()),
           "logits_std": float(exact.std()), "top2_gap_median": float((best2[:, 0] - best2[:, 1]).median())}
    for side in models:
        err = (cat[side] - exact).abs()
        per_image = (cat[side].argmax(-1) == top).view(n_images, -1)  # a random model's steps repeat one image's call
        out[side] = {"top1_as_float32": float((cat[side].argmax(-1) == top).double().mean()),
                     "images_every_step_as_float32": int(per_image.all(dim=1).sum()),
                     "top1_as_float64": float((cat[side].argmax(-1) == exact.argmax(-1)).double().mean()),
                     "max_abs_err_vs_float64": float(err.max()), "mean_abs_err_vs_float64": float(err.mean())}
        log(f"  {shape} {side}: {out[side]}")
    return out


# ---------------------------------------------------------------- kernels: the LM head
def _median_ms(fn, x, n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def kernels(repeats: int = 20) -> dict:
    """The git-base LM head through each kernel at 1 and 4 rows: median ms and max |error| against float64."""
    from git_scratch.quantize import Int8Linear

    torch.manual_seed(0)
    head = nn.Linear(768, 30522).eval()
    w = head.weight.detach()
    scale = w.abs().amax(1) / 127
    wq = torch.round(w / scale[:, None]).to(torch.int8)
    fns = {"float32 (F.linear)": head,
           "bfloat16 weights": (lambda m: lambda x: m(x.bfloat16()))(copy.deepcopy(head).bfloat16()),
           "int8 fbgemm, per-channel (quantize.Int8Linear)": Int8Linear(head),
           "int8 weight-only, aten._weight_int8pack_mm": lambda x: torch.ops.aten._weight_int8pack_mm(
               x, wq, scale) + head.bias}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
            import torchao
        for name, config in (("Int8DynamicActivationInt8WeightConfig", Int8DynamicActivationInt8WeightConfig()),
                             ("Int8WeightOnlyConfig", Int8WeightOnlyConfig())):
            m = copy.deepcopy(head)
            quantize_(m, config)
            fns[f"torchao {torchao.__version__} {name}, eager"] = m
    except ImportError:
        log("  torchao is not installed: its kernels are left out (pip install torchao==0.18.0 to include them)")
    out = {}
    with torch.inference_mode():
        for rows in (1, 4):
            x = torch.randn(rows, 768)
            exact = nn.functional.linear(x.double(), w.double(), head.bias.detach().double())
            times = {k: [] for k in fns}
            for k, f in fns.items():
                f(x)  # warm-up
            for r in range(3):  # rounds, alternating order, so drift hits every kernel alike
                for k in (fns if r % 2 == 0 else list(fns)[::-1]):
                    times[k].append(_median_ms(fns[k], x, repeats))
            for k, f in fns.items():
                err = float((f(x).double() - exact).abs().max())
                out.setdefault(k, {})[f"{rows} row{'s' * (rows > 1)}"] = {"ms": statistics.median(times[k]),
                                                                        "max_abs_err": err}
                log(f"  LM head, {rows} row(s), {k}: {statistics.median(times[k]):.2f} ms, max |err| {err:.1e}")
    return out


# ---------------------------------------------------------------- breakdown: where a greedy caption's time goes
def _median_call_ms(f, repeats: int) -> float:
    f()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def breakdown(modes: list[str], root: Path, new: int = 20) -> dict:
    """Per mode (float32 first): ms of the vision pass, the image's decoder pass, the prompt, a decode step,
    and a whole greedy caption of `new` tokens, one git-base image."""
    from git_scratch.generation.decoders import Cached

    _, our_dir = checkpoint("git-base", False, root, log=log)
    out = {}
    for mode in ["float32", *modes]:
        m = load_ours(our_dir) if mode == "float32" else load_mode(our_dir, mode)
        px = pixels(m.config, 1)
        with torch.inference_mode():
            img = m.encode_image(px)
            mask = m.mask(img.shape[1], new + 1)
            dec = Cached(m, img, 1, mask)
            dec.prefill_image()
            cls = torch.tensor([[m.config.text.bos_id]])
            tok, pos = torch.tensor([1000]), torch.tensor([3])
            r = {"vision": _median_call_ms(lambda: m.encode_image(px), 5),
                 "image prefill": _median_call_ms(lambda: Cached(m, img, 1, mask).prefill_image(), 5),
                 "prompt": _median_call_ms(lambda: dec.hidden(cls, torch.zeros(1, 1, dtype=torch.long)), 10),
                 "decode step": _median_call_ms(lambda: dec.decode_step(tok, pos), 20),
                 "greedy caption": _median_call_ms(lambda: m.generate(px, max_new_tokens=new, min_new_tokens=new), 3)}
        out[mode] = r
        log(f"  {mode}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in r.items()))
    return out


# ---------------------------------------------------------------- report
def markdown(report: dict) -> str:
    m = report["machine"]
    cpu = m["cpu"]
    lines = [f"Machine: {cpu['model']} (family/model {cpu.get('family_model')}), "
             f"flags {' '.join(cpu['flags']) or '—'}, "
             f"{m['threads']} torch threads; torch {m['torch']}. {report['date']}. Seconds per part: "
             + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()) + "."]
    demo = report.get("demo")
    if demo:
        lines += ["", f"Demo model, {demo['float32']['n_captions']} fresh seeds from {FRESH} "
                  f"({demo['float32']['n_answers']} questions): exact-match accuracy, and the share of texts "
                  "identical to float32's.", "",
                  "| mode | captions exact | answers exact | captions = float32 | answers = float32 | seconds |",
                  "|---|---|---|---|---|---|"]
        for mode, r in demo.items():
            same = [f"{100 * r[k]:.1f}%" if k in r else "—" for k in ("captions_as_float32", "answers_as_float32")]
            lines.append(f"| {mode} | {100 * r['captions']:.1f}% | {100 * r['answers']:.1f}% | {same[0]} | {same[1]} "
                         f"| {r['seconds']:.0f} |")
    rnd = report.get("random")
    if rnd:
        lines += ["", "Random shapes (init std 0.1), random texts forced over the KV cache, one image a call: "
                  "top-1 agreement and the logits' error against float64; beside them the logits' scale and the "
                  "median gap between the two best (float64).", "",
                  "| shape | steps | mode | top-1 = float32 | images, every step = float32 | top-1 = float64 "
                  "| max abs err | mean abs err | logits mean abs (std) | top-2 gap, median |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for shape, r in rnd.items():
            for mode in [k for k in r if isinstance(r[k], dict)]:
                m = r[mode]
                lines.append(f"| {shape} | {r['steps']} ({r['images']} images) | {mode} "
                             f"| {100 * m['top1_as_float32']:.1f}% "
                             f"| {m['images_every_step_as_float32']} of {r['images']} "
                             f"| {100 * m['top1_as_float64']:.1f}% "
                             f"| {m['max_abs_err_vs_float64']:.2e} | {m['mean_abs_err_vs_float64']:.2e} "
                             f"| {r['logits_abs_mean']:.2f} ({r['logits_std']:.2f}) | {r['top2_gap_median']:.2f} |")
    ker = report.get("kernels")
    if ker:
        lines += ["", "git-base LM head (30,522 x 768), median ms (max |error| against float64):", "",
                  "| kernel | 1 row | 4 rows |", "|---|---|---|"]
        for k, r in ker.items():
            lines.append(f"| {k} | " + " | ".join(f"{v['ms']:.2f} ({v['max_abs_err']:.1e})" for v in r.values())
                         + " |")
    brk = report.get("breakdown")
    if brk:
        parts = list(next(iter(brk.values())))
        lines += ["", "git-base, one image, 20 new tokens: median ms per part", "",
                  "| mode | " + " | ".join(parts) + " |", "|---" * (len(parts) + 1) + "|"]
        for mode, r in brk.items():
            lines.append(f"| {mode} | " + " | ".join(f"{r[k]:.1f}" for k in parts) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["demo", "random"], choices=["demo", "random", "kernels", "breakdown"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--n", type=int, default=1000, help="demo seeds (default 1000)")
    p.add_argument("--shapes", nargs="+", default=["git-base", "git-large"], choices=["git-base", "git-large"])
    p.add_argument("--images", type=int, default=24, help="random images per shape (default 24)")
    p.add_argument("--tokens", type=int, default=10, help="teacher-forced steps per image (default 10)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS, help="results and the checkpoint cache (default bench/results)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    report = {**report_head(a), "seconds": {}}
    for part in a.parts:
        t0 = time.perf_counter()
        log(f"{part} ...")
        if part == "demo":
            report["demo"] = demo_agreement(a.n, a.modes)
        elif part == "random":
            report["random"] = {s: random_agreement(s, a.modes, a.images, a.tokens, a.out / "checkpoints")
                                for s in a.shapes}
        elif part == "breakdown":
            report["breakdown"] = breakdown(a.modes, a.out / "checkpoints")
        else:
            report["kernels"] = kernels()
        report["seconds"][part] = time.perf_counter() - t0
    md = markdown(report)
    save_report(a.out, "quantize", report, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
