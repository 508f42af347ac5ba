"""Peak memory of one workload on one side, measured in a fresh child process.

Why a child process and the kernel's high-water mark: torch's CPU tensors come from malloc, which
tracemalloc does not see, and both sides must be measured the same way. Each child imports the same
modules (torch, transformers, git_scratch), loads only its own side's model, builds the inputs, then
resets the peak resident set size (writing 5 to /proc/self/clear_refs, Linux >= 4.0), runs the
workload once and reads VmHWM. So `peak_mib` is everything resident at the worst moment (weights,
activations, caches, the interpreter), identical overheads on both sides, and `extra_mib` is what the
workload added on top of the loaded model. Without clear_refs (not Linux) it falls back to ru_maxrss,
which also counts loading.

    python -m bench.memory HF_DIR OUR_DIR WORKLOAD ours|theirs [--threads 2] [--ours-dtype float32] [--mode int8]
    # prints one JSON line; --mode: git_scratch in one of workloads.MODES instead of --ours-dtype
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

import torch


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(hf_dir: Path, our_dir: Path, workload: str, side: str, ours_dtype: str = "float32",
            mode: str | None = None) -> dict:
    import transformers  # noqa: F401  (imported on both sides so the baselines match)

    import git_scratch
    from bench.workloads import WORKLOADS, load_mode, load_ours, load_theirs

    w = WORKLOADS[workload]
    if side == "ours":
        model = load_mode(our_dir, mode) if mode else load_ours(our_dir, ours_dtype)
    else:
        model = load_theirs(hf_dir)
    inputs = w.inputs(git_scratch.GitConfig.from_json(our_dir / "config.json"))
    fn = w.ours if side == "ours" else w.theirs
    before = _status_kib("VmRSS")
    reset = _reset_peak()
    if w.grad:
        fn(model, **inputs)
    else:
        with torch.inference_mode():
            fn(model, **inputs)
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_mib": round(peak / 1024, 1),
        "extra_mib": round((peak - before) / 1024, 1) if reset and before else None,
        "method": "VmHWM after clear_refs" if reset else "ru_maxrss (includes loading)",
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hf_dir", type=Path)
    p.add_argument("our_dir", type=Path)
    p.add_argument("workload")
    p.add_argument("side", choices=["ours", "theirs"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ours-dtype", default="float32")
    p.add_argument("--mode", default=None, help="git_scratch in this mode of workloads.MODES (int8, bfloat16)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(json.dumps(measure(a.hf_dir, a.our_dir, a.workload, a.side, a.ours_dtype, a.mode)))


if __name__ == "__main__":
    main()
