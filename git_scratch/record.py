"""Intermediates on request, through one named path: hidden states and attention maps.

Blocks take only what they compute with (`x, allowed, kv`); nothing threads lists through their signatures.
Inside `recording(...)`, each block's input and output are kept by forward hooks, and every `Attention`
hands its probabilities to `attention(...)` below (which makes it write its softmax out instead of calling
SDPA, which never shows them). Outside, both cost nothing. `GIT.forward(output_hidden_states=True,
output_attentions=True)` reads them from here.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(eq=False)  # identity: `_active.remove` must never compare recordings' tensors
class Recording:
    """What one `recording` kept, by module: read it with `hidden_states` and `attentions`."""

    maps: bool  # keep attention probabilities
    inputs: dict = field(default_factory=dict)  # block -> its input x
    outputs: dict = field(default_factory=dict)  # block -> its output
    probs: dict = field(default_factory=dict)  # Attention -> its probabilities (B, H, L, S)

    def hidden_states(self, blocks) -> list[torch.Tensor]:
        """The first block's input, then every block's output: len(blocks) + 1 tensors."""
        return [self.inputs[blocks[0]]] + [self.outputs[b] for b in blocks]

    def attentions(self, blocks) -> list[torch.Tensor]:
        return [self.probs[b.attn] for b in blocks]


_active: list[Recording] = []  # the recordings open now, innermost last (a plain list: torch.compile reads it)


def wants_maps() -> bool:
    """True inside a recording of attention maps: Attention then computes its softmax explicitly."""
    return bool(_active) and _active[-1].maps


def attention(module: nn.Module, probs: torch.Tensor) -> None:
    """Called by Attention with its probabilities; kept only inside a recording of maps."""
    if _active and _active[-1].maps:
        _active[-1].probs[module] = probs


@contextmanager
def recording(blocks: list, hidden: bool = True, maps: bool = True):
    """Keep the inputs/outputs of `blocks` (any number of block lists) and, with `maps`, attention probabilities.

        with recording([model.blocks]) as rec:
            model(pixels, ids)
        rec.hidden_states(model.blocks), rec.attentions(model.blocks)
    """
    rec, handles = Recording(maps), []
    if hidden:
        for bs in blocks:
            handles.append(bs[0].register_forward_pre_hook(lambda m, args: rec.inputs.__setitem__(m, args[0])))
            handles += [b.register_forward_hook(lambda m, args, out: rec.outputs.__setitem__(m, out)) for b in bs]
    _active.append(rec)
    try:
        yield rec
    finally:
        _active.remove(rec)
        for h in handles:
            h.remove()
