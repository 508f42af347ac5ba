"""git_scratch's other modes as columns beside float32 (`python -m bench --modes int8 bfloat16`).

Each mode (workloads.MODES: int8 = load(quantize="int8"), int8-bf16vision = the same with a bfloat16 vision
encoder, bfloat16 = load(dtype="bfloat16")) is a side of its own in run.time_pair's alternation, so it meets the
same machine drift as float32 and transformers. Its time is held against transformers float32 (the ratio the
targets speak of) and its ids against float32 git_scratch's: rows identical, and the share of generated tokens
before each row's first difference. A mode is expected to differ
somewhere; how often, at scale, is `python -m bench.quantize`'s job (the demo model's exact answers, and the
top-1 agreement under teacher forcing).
"""

from __future__ import annotations

from .ties import rows
from .workloads import MODE_NAMES, WORKLOADS


def takes_modes(w) -> bool:
    """Generation only: the vision encoder alone is float32 in int8 mode, and training has no int8."""
    return not w.grad and not w.exact


def rows_agreement(mode_out, ours_out) -> dict:
    """{"rows_same", "rows", "tokens_same_share", "detail"} of a mode's ids against float32 git_scratch's."""
    a, b = rows(mode_out), rows(ours_out)
    same, prefix, total = 0, 0, 0
    for x, y in zip(a, b):
        n = min(len(x), len(y))
        differ = (x[:n] != y[:n]).nonzero()
        first = int(differ[0]) if len(differ) else n
        same += first == n and len(x) == len(y)
        prefix, total = prefix + first, total + max(len(x), len(y))
    share = prefix / total if total else float("nan")
    return {"rows_same": same, "rows": len(b), "tokens_same_share": share,
            "detail": f"{same} of {len(b)} rows = float32's ({100 * share:.0f}% of tokens before a difference)"}


def decode_step_ms(workloads: dict, side: str) -> float | None:
    """Per new token, from the fastest runs: (greedy, 40 new tokens - greedy, 20) / 20, as run.limits does."""
    g20, g40 = workloads.get("greedy-1"), workloads.get("greedy-1-40")
    if not g20 or not g40:
        return None
    if side in ("ours", "theirs"):
        return (g40[side]["min"] - g20[side]["min"]) / 20 * 1e3
    if side in g20.get("modes", {}) and side in g40.get("modes", {}):
        return (g40["modes"][side]["min"] - g20["modes"][side]["min"]) / 20 * 1e3
    return None


def _mem(r: dict, side: str) -> str:
    m = (r.get("memory") or {}).get(side)
    return "—" if not m else f"{m['peak_mib']:.0f}"


def modes_markdown(report: dict) -> str:
    """The modes table (empty when no --modes): one row per workload, float32 then each mode, time (ratio to
    transformers float32), the mode's ids against float32 git_scratch's, target; then the decode step."""
    modes = report["args"].get("modes") or []
    if not modes:
        return ""
    head = "| shape | workload | transformers f32 s | git_scratch f32 s (ratio) | " + " | ".join(
        f"{m} s (ratio) | {m} ids vs f32" for m in modes) + " | target | peak MiB f32 / " + " / ".join(modes) + " |"
    lines = [
        "",
        f"Modes (`--modes {' '.join(modes)}`): git_scratch float32 beside "
        + ", ".join(MODE_NAMES[m] for m in modes)
        + ", each timed in the same alternation as the main table (median; ratio to transformers float32). "
        "Ids: rows identical to float32 git_scratch's (a mode may differ: agreement at scale is "
        "`python -m bench.quantize`). Target: the workload's ratio target, met by the mode's ratio.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for shape, sr in report["shapes"].items():
        wl = sr.get("workloads", {})
        for name, r in wl.items():
            if "modes" not in r:
                continue
            w = WORKLOADS[name]
            cells = []
            for m in modes:
                mr = r["modes"][m]
                cells += [f"{mr['median']:.3f} ({mr['ratio']:.2f})", mr["detail"]]
            tgt = "—" if w.target is None else f"≤ {w.target}: " + ", ".join(
                f"{m} {'✅' if r['modes'][m]['ratio'] <= w.target else '❌'}" for m in modes)
            lines.append(f"| {shape} | {w.title} | {r['theirs']['median']:.3f} | {r['ours']['median']:.3f} "
                         f"({r['ratio']:.2f}) | " + " | ".join(cells) + f" | {tgt} | "
                         + " / ".join(_mem(r, s) for s in ("ours", *modes)) + " |")
        steps = {s: decode_step_ms(wl, s) for s in ("theirs", "ours", *modes)}
        if all(v is not None for v in steps.values()):
            lines.append(f"| {shape} | decode step, 1 row (from 40 − 20 new tokens, fastest runs), ms "
                         f"| {steps['theirs']:.1f} | {steps['ours']:.1f} | "
                         + " | ".join(f"{steps[m]:.1f} | —" for m in modes) + " | — | — |")
    return "\n".join(lines) + "\n"
