"""An architecture change, shown: the shapes model trained three ways, accuracies side by side.

    post      GIT as it is: post-LN decoder blocks (BERT's wiring)
    pre       text.norm = "pre": pre-LN blocks + a final LayerNorm (a config change only)
    swiglu    GIT with a SwiGLU MLP in every decoder block, swapped in here, in user code

Each model starts from the same seed, sees the same batches in the same order under the same options,
and is scored on the same held-out images with demo.predict / demo.score (exact match: a caption or an
answer counts only if it is exactly the truth). SwiGLU (Shazeer 2020, "GLU Variants Improve
Transformer"; LLaMA's MLP) is one module assigned to `block.mlp`: nothing in generate.py or cache.py
knows about it, yet `model.generate` runs it, because generation runs the model's own blocks. The script
checks that: cached decoding must give exactly the ids of the uncached rollout (`use_cache=False`).

    python examples/architecture.py                    # defaults: ~18 min on 2 CPU cores, all 3 models
    python examples/architecture.py --steps 200 --eval-images 50 --out runs/arch-quick

Change `VARIANTS` to compare your own idea; each run leaves its checkpoint and curves.png under --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from git_scratch import GIT, GitConfig, init_weights
from git_scratch.evaluation import demo
from git_scratch.data import shapes
from git_scratch.data.datasets import ShapesDataset
from git_scratch.training.loop import TrainOptions, train

SEED = 0
CHECK_IMAGES = 4  # held-out images on which cached generate must equal the uncached rollout


class SwiGLU(nn.Module):
    """fc2(silu(gate) * up), with [up ; gate] = fc1(x): the MLP of LLaMA and PaLM.

    The same names as layers.MLP (fc1, fc2); fc1 is packed, D -> 2 * hidden. hidden ~ 2/3 of GIT's
    mlp_dim keeps the parameter count of the GELU MLP it replaces (3 * D * hidden ~ 2 * D * mlp_dim).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        up, gate = self.fc1(x).chunk(2, dim=-1)  # (B, L, hidden) each
        return self.fc2(F.silu(gate) * up)


def with_swiglu(model: GIT) -> GIT:
    t = model.config.text
    for block in model.blocks:  # the whole change: TextBlock.forward calls self.mlp, whatever it is
        block.mlp = SwiGLU(t.dim, 2 * t.mlp_dim // 3 // 16 * 16)  # 336, not 341: a multiple of 16 runs faster
    return model


def pre_norm(cfg: GitConfig) -> GitConfig:
    return replace(cfg, text=replace(cfg.text, norm="pre"))


# name -> (config change, model change); the model change runs before the seeded initialisation
VARIANTS = {
    "post": (lambda cfg: cfg, lambda model: model),
    "pre": (pre_norm, lambda model: model),
    "swiglu": (lambda cfg: cfg, with_swiglu),
}


def build(name: str) -> GIT:
    change_config, change_model = VARIANTS[name]
    model = change_model(GIT(change_config(GitConfig.preset("shapes-tiny"))))
    return init_weights(model, generator=torch.Generator().manual_seed(SEED))


@torch.no_grad()
def check_cache(model: GIT, processor, seeds) -> None:
    """Cached generation equals the uncached rollout (the whole sequence through forward each step)."""
    model.eval()
    samples = [shapes.sample(s) for s in seeds]  # (image, caption, [(question, answer), ...])
    pixels = torch.from_numpy(processor.pixel_values([image for image, _, _ in samples] * 2))
    prompts = [[model.config.text.bos_id]] * len(samples)  # a caption of each image, then its first question
    prompts += [processor.tokenizer.encode(qa[0][0]) for _, _, qa in samples]
    cached = model.generate(pixels, prompts, max_new_tokens=demo.CAPTION_TOKENS)
    rollout = model.generate(pixels, prompts, max_new_tokens=demo.CAPTION_TOKENS, use_cache=False)
    assert torch.equal(cached, rollout), f"cached generation differs from the uncached rollout:\n{cached}\n{rollout}"


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def run(args) -> list[dict]:
    processor = shapes.processor()
    data = ShapesDataset(10**7, "both")  # seeds 0.., never repeated in any run this size
    val = ShapesDataset(args.eval_images, "both", offset=shapes.VAL_OFFSET)  # held-out loss
    seeds = range(demo.FRESH, demo.FRESH + args.eval_images)  # held-out accuracy
    # bf16 "off": on a CPU, float32 was measured faster than bfloat16 autocast for a model this small
    opts = TrainOptions(steps=args.steps, batch_size=args.batch_size, lr=1e-3, warmup=max(1, args.steps // 20),
                        min_lr=1e-5, seed=SEED, bf16="off", augment=False, save_every=args.steps, keep=1,
                        log_every=10, progress=False)
    rows, started = [], time.perf_counter()
    for i, name in enumerate(VARIANTS):
        model = build(name)
        print(f"[{name}] training {args.steps} steps x {args.batch_size} examples ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        result = train(model, data, processor, opts, args.out / name, val=val)
        seconds = time.perf_counter() - t0
        s = demo.score(demo.predict(model, processor, seeds))
        check_cache(model, processor, seeds[:CHECK_IMAGES])
        print(f"[{name}] cached generate == uncached rollout on {len(seeds[:CHECK_IMAGES])} images", file=sys.stderr)
        total = time.perf_counter() - t0
        left = (len(VARIANTS) - i - 1) * (time.perf_counter() - started) / (i + 1)  # the models so far, on average
        print(f"[{name}] {seconds:.0f} s training, {total - seconds:.0f} s scoring; ~{left / 60:.0f} min to go",
              file=sys.stderr, flush=True)
        rows.append({"name": name, "params": sum(p.numel() for p in model.parameters()), "score": s,
                     "loss": result["val"]["loss_hf"], "seconds": seconds})
    print(f"all {len(VARIANTS)} models: {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    ns = sorted({n for r in rows for n in r["score"]["by_shapes"]})
    by = " / ".join(str(n) for n in ns)
    lines = [f"| model | params | caption exact | answer exact | caption exact, {by} shapes | held-out loss | "
             "train time |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["score"]
        per = " / ".join(percent(s["by_shapes"][n]["captions"]) for n in ns)
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.2f} M | {percent(s['captions'])} | {percent(s['answers'])} "
                     f"| {per} | {r['loss']:.4f} | {r['seconds']:.0f} s |")
    s = rows[0]["score"]
    return "\n".join(lines) + f"\n\n{s['n_captions']} held-out images, {s['n_answers']} questions."


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1400, help="optimizer steps per model (default 1400)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (default 32)")
    p.add_argument("--eval-images", type=int, default=500, help="held-out images scored (default 500)")
    p.add_argument("--out", type=Path, default=Path("runs/architecture"), help="checkpoints, one folder per model")
    args = p.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} is not empty; choose another --out")
    out = table(run(args))
    print(out)
    return out


if __name__ == "__main__":
    main()
