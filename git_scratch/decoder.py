"""GIT's text decoder side: the visual projection, the text embeddings and the decoder block (BERT's post-LN).

Shapes: the legend in model.py.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .config import GitConfig, TextConfig
from .layers import MLP, Attention


class ImageProjection(nn.Module):
    """Vision features -> decoder width: Linear + LayerNorm (+ one temporal embedding per video frame)."""

    def __init__(self, config: GitConfig):
        super().__init__()
        if config.n_frames:
            # Added to each frame's features *before* projection, so frames stay distinguishable.
            self.temporal_embed = nn.ParameterList(
                nn.Parameter(torch.zeros(1, 1, config.vision.dim)) for _ in range(config.n_frames)
            )
        self.fc = nn.Linear(config.vision.dim, config.text.dim)
        # NB: this LayerNorm uses the *vision* epsilon (1e-5), not the text one (1e-12).
        self.ln = nn.LayerNorm(config.text.dim, eps=config.vision.ln_eps)

    def add_time(self, frames: torch.Tensor) -> torch.Tensor:
        """Video: (B, F, N1, Dv) -> (B, F*N1, Dv), frame f's features shifted by temporal embedding f."""
        F = frames.shape[1]
        time = torch.cat(list(self.temporal_embed)[:F])  # (F, 1, Dv)
        return rearrange(frames + time, "b f n d -> b (f n) d")

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.ln(self.fc(feats.to(self.fc.weight.dtype)))  # (B, N, Dv) -> (B, N, D), in the decoder's dtype


class TextEmbedding(nn.Module):
    """Word + position embeddings, then LayerNorm (BERT).

    NB: text positions start at 0 at [CLS]; image tokens get no text position at all.
    """

    def __init__(self, config: TextConfig):
        super().__init__()
        self.tok_embed = nn.Embedding(config.vocab_size, config.dim)
        self.pos_embed = nn.Embedding(config.max_positions, config.dim)
        self.ln = nn.LayerNorm(config.dim, eps=config.ln_eps if config.embed_ln_eps is None else config.embed_ln_eps)

    def forward(self, ids: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """(B, T) ids -> (B, T, D); `start` is the text position of ids[:, 0] (the step index when decoding)."""
        pos = torch.arange(ids.shape[1], device=ids.device) + start
        return self.ln(self.tok_embed(ids) + self.pos_embed(pos))


class TextBlock(nn.Module):
    """The decoder block, wired here and nowhere else (generation runs it too, over the cache).

    "post" (GIT, BERT): transform, add, then normalise.   "pre" (text.norm = "pre"): normalise, transform, add.
        x ─┬─ attn ─(+)─ ln_1 ─┬─ mlp ─(+)─ ln_2 ─▶         x ─┬─ ln_1 ─ attn ─(+)─┬─ ln_2 ─ mlp ─(+)─▶
           └─────────┘         └────────┘                      └───────────────────┘└──────────────────┘
    Tokens meet only inside `attn`, under `allowed`: that is what makes the KV cache exact (cache.py).

    The contract every decoder block keeps (GIT.run, the cached prefill and the decode step call it alike):
        forward(x, allowed, kv=None, *, n_img) -> (B, L, D)    keys_values(x, *, n_img) -> (k, v), (B, H, L, Dh) each
    x (B, L, D): its first `n_img` tokens are image tokens, the rest text (the full forward: n_img = N; the
    image prefill: all N image; a decode step: 0). `allowed`: the may-attend rows of x, handed unchanged to the
    one attention that reads `kv` (a cache layer while generating; None otherwise). A block that treats image
    and text tokens differently (a gate, cross-attention) decides by `n_img`, never by position or shape.
    """

    def __init__(self, config: TextConfig):
        super().__init__()
        self.pre = config.norm == "pre"
        self.attn = Attention(config.dim, config.n_heads)
        self.ln_1 = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.mlp = MLP(config.dim, config.mlp_dim, config.act)
        self.ln_2 = nn.LayerNorm(config.dim, eps=config.ln_eps)

    def forward(self, x, allowed, kv=None, *, n_img: int) -> torch.Tensor:
        if self.pre:
            x = x + self.attn(self.ln_1(x), allowed, kv, n_img=n_img)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, allowed, kv, n_img=n_img))
        return self.ln_2(x + self.mlp(x))

    def keys_values(self, x, *, n_img: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values `attn` computes from x (B, L, D), and nothing after them: the image prefill needs
        only these of the last block (generation/decoders.py). Wired as `forward` reads x above."""
        return self.attn.keys_values(self.ln_1(x) if self.pre else x, n_img=n_img)
