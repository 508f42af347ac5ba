"""Random initialisation, as transformers initialises GIT (training/init_checkpoint.py writes a whole
random checkpoint directory with it)."""

from __future__ import annotations

import torch
from torch import nn

from .model import GIT


@torch.no_grad()
def init_weights(model: GIT, std: float = 0.02, generator: torch.Generator | None = None) -> GIT:
    """BERT/CLIP-style init as transformers does it: N(0, std) weights and embeddings, zero biases,
    LayerNorms at identity, temporal embeddings at zero."""
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
            m.weight.normal_(0.0, std, generator=generator)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    model.vision.cls_token.normal_(0.0, std, generator=generator)
    model.vision.pos_embed.normal_(0.0, std, generator=generator)
    for t in getattr(model.img_proj, "temporal_embed", []):
        t.zero_()
    return model
