"""The transformers side of the generation tests (test_generate.py); checkpoints come from reference.build.

Every expected output is computed from pixels that pass through `reference_pixels`. It is the
identity; it exists so the tests can be checked for blindness to the image: patch it to add an offset
(`H.reference_pixels = lambda px: px + 0.5`) and every generation test must fail.
"""

from __future__ import annotations

import torch

from reference import Reference


def reference_pixels(px: torch.Tensor) -> torch.Tensor:
    return px


def hf_generate(r: Reference, px: torch.Tensor, ids=None, mask=None, **kw):
    """transformers' generate, greedy unless told; `return_dict=True` for scores and beam indices."""
    if kw.pop("return_dict", False):
        kw.update(return_dict_in_generate=True, output_scores=True)
    if kw.get("do_sample"):
        kw.setdefault("top_k", 0)  # transformers' default is 50; ours is 0 (off), as the issue specifies
    with torch.no_grad():
        return r.hf.generate(pixel_values=reference_pixels(px), input_ids=ids, attention_mask=mask, **kw)


def left_pad(prompts: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths -> (ids, attention_mask), padded on the left as transformers expects."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):], mask[i, T - len(p):] = p, 1
    return ids, mask


def right_pad(prompts: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)], mask[i, : len(p)] = p, 1
    return ids, mask


class CountImages:
    """Counts images through the vision encoder (video: frames) while active."""

    def __init__(self, model):
        self.model, self.images, self.calls = model, 0, 0

    def __enter__(self):
        def hook(_module, args):
            self.calls += 1
            self.images += args[0].shape[0]

        self.handle = self.model.vision.register_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
