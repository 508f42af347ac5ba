"""curves.png: the training and held-out losses of a run, drawn with Pillow (no plotting library).

Only finite numbers are drawn: a value logged as null (a diverged step), NaN or Infinity (an older
metrics.jsonl), a line cut short by a kill and any row not of ours are passed over, so the plot never
fails on what a failed run left.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

SERIES = {  # metrics.jsonl key -> (legend, colour)
    "loss": ("train loss", (31, 119, 180)),
    "val_loss_hf": ("held-out loss (hf)", (255, 127, 14)),
    "val_loss_original": ("held-out loss (original)", (44, 160, 44)),
}
WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 20, 40  # plot margins, px
TICKS = 5


def read_series(metrics: Path) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} by step, finite values only; a step logged twice (a run resumed from an
    earlier checkpoint repeats the steps after it) keeps its last value."""
    by_key: dict[str, dict[int, float]] = {k: {} for k in SERIES}
    for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a kill, or not ours
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            continue
        for k in SERIES:
            v = row.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                by_key[k][step] = float(v)
            elif k in row:  # null or NaN: a diverged step has no value to draw
                by_key[k].pop(step, None)
    return {k: sorted(v.items()) for k, v in by_key.items() if v}


def plot_curves(metrics: Path, png: Path) -> Path | None:
    """Draw every series of `metrics` (a metrics.jsonl) against the step into `png`; None if there is
    nothing to draw (no file, no finite value)."""
    if not metrics.is_file():
        return None
    series = read_series(metrics)
    if not series:
        return None
    points = [p for s in series.values() for p in s]
    x_max = max(1, max(x for x, _ in points))
    y_lo, y_hi = min(y for _, y in points), max(y for _, y in points)
    pad = 0.05 * (y_hi - y_lo) or 0.5
    y_lo, y_hi = y_lo - pad, y_hi + pad
    if not math.isfinite(y_hi - y_lo):  # values near the float range's ends: no scale to draw them on
        return None

    def at(x: float, y: float) -> tuple[float, float]:
        return (LEFT + (WIDTH - LEFT - RIGHT) * x / x_max,
                TOP + (HEIGHT - TOP - BOTTOM) * (y_hi - y) / (y_hi - y_lo))

    im = Image.new("RGB", (WIDTH, HEIGHT), "white")
    d = ImageDraw.Draw(im)
    for i in range(TICKS + 1):  # grid and tick labels
        y = y_lo + (y_hi - y_lo) * i / TICKS
        d.line([at(0, y), at(x_max, y)], fill=(225, 225, 225))
        d.text((5, at(0, y)[1] - 6), f"{y:.3g}", fill="black")
        x = x_max * i / TICKS
        d.text((at(x, y_lo)[0] - 10, HEIGHT - BOTTOM + 8), f"{x:.0f}", fill="black")
    d.rectangle([at(0, y_hi), at(x_max, y_lo)], outline="black")
    d.text((WIDTH // 2 - 10, HEIGHT - 16), "step", fill="black")
    for row, (key, pts) in enumerate(series.items()):
        legend, colour = SERIES[key]
        xy = [at(x, y) for x, y in pts]
        if len(xy) > 1:
            d.line(xy, fill=colour, width=2)
        for px, py in xy if len(xy) < 50 else []:  # few points: mark each
            d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        lx, ly = WIDTH - RIGHT - 190, TOP + 8 + 16 * row
        d.line([(lx, ly + 6), (lx + 20, ly + 6)], fill=colour, width=2)
        d.text((lx + 26, ly), legend, fill="black")
    png.parent.mkdir(parents=True, exist_ok=True)
    im.save(png)
    return png
