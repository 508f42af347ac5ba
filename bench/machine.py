"""The machine the benchmark ran on, and its limits: fp32 matmul throughput and memory bandwidth.

Two numbers bound every workload here:
  * the vision encoder is FLOP-bound (big matmuls over N image tokens): its floor is FLOPs / matmul rate;
  * one decode step is weight-read-bound (a (B, 1, D) row times every decoder weight and the LM head):
    its floor is (bytes of weights + bytes of K/V cache read) / memory bandwidth.
`roofline()` measures both rates; `run.py` compares the measured workloads against them.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime
from pathlib import Path

import torch

# int8 (git_scratch/quantize.py): VNNI's int8 dot products, which fbgemm's kernels use where they exist
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "f16c", "avx512_vnni",
             "avx_vnni", "amx_int8")


def cpu_info() -> dict:
    """CPU model, family/model numbers (a bare "AMD EPYC" names no generation: 25/1 is Zen 3, 25/17 Zen 4) and
    the flags that matter for matmul speed (AVX2 / AVX-512 / AMX bf16, VNNI int8)."""
    model, flags, ids = platform.processor() or platform.machine(), set(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("cpu family", "model\t")) and line.split(":")[0].strip() not in ids:
                ids[line.split(":")[0].strip()] = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    family_model = f"{ids['cpu family']}/{ids['model']}" if len(ids) == 2 else None
    return {"model": model, "family_model": family_model, "flags": [f for f in CPU_FLAGS if f in flags]}


def machine_info() -> dict:
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)  # GiB
    except OSError:
        pass
    import transformers  # the benchmark's reference side (never imported by git_scratch itself)

    return {
        "cpu": cpu_info(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "memory_gib": mem,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call packing / page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_gflops(m: int, k: int, n: int, dtype=torch.float32, repeats: int = 5) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return 2 * m * k * n / _best_time(lambda: a @ b, repeats) / 1e9


def linear_seconds(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Best time of one fp32 nn.Linear (with bias) of this shape: (m, k) rows -> (m, n)."""
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    return _best_time(lambda: torch.nn.functional.linear(x, w, b), repeats)


def bandwidth_gbs(mib: int = 1024, repeats: int = 10) -> dict:
    """Memory bandwidth over a buffer larger than the caches.

    "read" is a (1, K) row times a (M, K) matrix: the very operation of a decode step, so its rate is
    the floor a decode step can reach. "copy" (read + write) is given for comparison.
    """
    w = torch.ones(mib * 2**20 // 4 // 1024, 1024)
    row, y = torch.ones(1, 1024), torch.empty_like(w)
    nbytes = w.numel() * 4
    read = nbytes / _best_time(lambda: torch.nn.functional.linear(row, w), repeats) / 1e9
    copy = 2 * nbytes / _best_time(lambda: y.copy_(w), repeats) / 1e9
    return {"read": round(read, 1), "copy": round(copy, 1), "buffer_mib": mib}


def roofline() -> dict:
    """The rates the workloads are held against (the vision encoder's own matmul shape is measured in run.py)."""
    shapes = {"square 2048": (2048, 2048, 2048), "1576x768x3072": (1576, 768, 3072), "257x1024x4096": (257, 1024, 4096)}
    fp32 = {name: round(matmul_gflops(*s), 1) for name, s in shapes.items()}
    return {
        "matmul_gflops_fp32": fp32,
        "matmul_gflops_fp32_peak": max(fp32.values()),
        # for reference only: bf16 is where AMX / AVX512-BF16 pay off (the identical-ids runs stay fp32)
        "matmul_gflops_bf16_square": round(matmul_gflops(2048, 2048, 2048, torch.bfloat16), 1),
        "bandwidth_gbs": bandwidth_gbs(),
    }


class OtherLoad:
    """How much of the CPU *other* processes used while we measured: a shared 2-core machine is noisy.

    Busy CPU time of the whole machine (/proc/stat) minus this process's and its children's own CPU time,
    as a fraction of all cores' capacity. Linux only; None elsewhere.
    """

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields) - fields[3] - fields[4]) / tick  # all but idle and iowait, seconds
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return busy, own, time.monotonic()

    def fraction(self) -> float | None:
        end = self._snapshot()
        if self.start is None or end is None:
            return None
        (b0, o0, w0), (b1, o1, w1) = self.start, end
        wall = max(w1 - w0, 1e-9)
        return max(0.0, ((b1 - b0) - (o1 - o0)) / (wall * (os.cpu_count() or 1)))


def save_report(out: Path, name: str, report: dict, md: str) -> Path:
    """Write a bench's results as out/NAME-<time>.json and .md; returns the .md path."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(md.rstrip() + "\n")
    return stem.with_suffix(".md")


def report_head(args) -> dict:
    """What every bench report starts with: when, on what machine, with which arguments (paths as text)."""
    return {"date": datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine_info(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
