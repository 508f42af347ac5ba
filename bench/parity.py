"""Measure how far git_scratch is from transformers, per test shape (float32).

    python bench/parity.py [shape ...]      # default: every shape in tests/reference.py

Prints, per shape, the largest difference relative to the reference's scale (max |ref|) for the vision
output, projected image tokens, text logits (plain and left-padded), the loss and a few gradients.
The parity tests assert these stay below 1e-5; this script says how much below.
"""

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reference import SHAPES, build  # noqa: E402
from test_parity import hf_image_tokens, rel_err  # noqa: E402

from git_scratch.convert.convert import NAME_MAP, rename  # noqa: E402


def measure(name: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        r = build(name, Path(d))
        px, ids = r.pixels(2, seed=1), r.ids(2, 9, seed=1)
        out = {}
        with torch.no_grad():
            ref_feats, ref_img = hf_image_tokens(r.hf, px)
            if px.ndim == 4:
                out["vision"] = rel_err(r.ours.vision(px), ref_feats)
            out["projected"] = rel_err(r.ours.encode_image(px), ref_img)
            ref = r.hf(pixel_values=px, input_ids=ids).logits
            N = ref.shape[1] - ids.shape[1]
            out["logits"] = rel_err(r.ours(px, ids).logits, ref[:, N:])
            mask = torch.ones_like(ids)
            mask[1, :4] = 0
            ref = r.hf(pixel_values=px, input_ids=ids, attention_mask=mask).logits
            out["logits_padded"] = rel_err(r.ours(px, ids, attention_mask=mask).logits, ref[:, N:])
        ref_loss = r.hf(pixel_values=px, input_ids=ids, labels=ids).loss
        loss = r.ours(px, ids, labels=ids).loss
        out["loss"] = abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())
        ref_loss.backward()
        loss.backward()
        names = rename([k for k, _ in r.hf.named_parameters()], NAME_MAP)
        ours = dict(r.ours.named_parameters())
        # k_proj biases are skipped: softmax is invariant to adding the same score to every key, so their
        # true gradient is exactly 0 and both sides hold only rounding noise (~1e-10) there.
        out["grads"] = max(
            rel_err(ours[names[k]].grad, p.grad) for k, p in r.hf.named_parameters() if "k_proj.bias" not in names[k]
        )
        return out


if __name__ == "__main__":
    names = sys.argv[1:] or list(SHAPES)
    cols = ["vision", "projected", "logits", "logits_padded", "loss", "grads"]
    print("| shape | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for n in names:
        m = measure(n)
        print(f"| {n} | " + " | ".join(f"{m[c]:.1e}" if c in m else "—" for c in cols) + " |", flush=True)
