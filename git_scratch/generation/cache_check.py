"""Cached decoding spot-checked against the uncached rollout, on the model's real weights and inputs.

A change the prefill does not reproduce (a gate on the image keys that only the full forward applies, say)
can hide at initial weights and still agree on most rows after training; only comparing the two paths tells.
`eval` and each training checkpoint run this check (a flag skips it), written here once.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def cache_mismatch(model, pixels: torch.Tensor, prompts=None, max_new_tokens: int = 8) -> str | None:
    """Greedy ids of `pixels` (B, 3, H, W) (and `prompts`, as generate takes them; None: captions) decoded over
    the KV cache and by the uncached rollout (the whole sequence through forward each step): None when every
    row agrees, else one sentence naming the first row that differs."""
    training = model.training
    model.eval()
    try:
        cached = model.generate(pixels, prompts, max_new_tokens=max_new_tokens).tolist()
        rollout = model.generate(pixels, prompts, max_new_tokens=max_new_tokens, use_cache=False).tolist()
    finally:
        model.train(training)
    for row, (a, b) in enumerate(zip(cached, rollout)):
        if a != b:
            return (f"cached decoding differs from the uncached rollout at row {row} of {len(cached)}: {a} != {b} "
                    "(a change the KV cache's prefill or decode step does not reproduce; see the README's "
                    "'Changing the architecture')")
    return None
