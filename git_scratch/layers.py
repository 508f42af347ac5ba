"""The two sub-layers both towers share: multi-head attention and the MLP.

Both towers use the same names (`attn.q_proj/k_proj/v_proj/out_proj`, `mlp.fc1/fc2`), so a reader
sees one attention and one MLP, and the weight table maps both towers onto them.
Shapes: the legend in model.py (L query tokens, S key tokens). Speed tricks for these live in fast.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import record


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    # NB: CLIP's sigmoid approximation of GELU; the vision tower of every GIT checkpoint uses it.
    return x * torch.sigmoid(1.702 * x)


# The activations a config may name (constants.ACTIVATIONS), as transformers' ACT2FN computes them.
ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU (BERT)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "relu": F.relu, "silu": F.silu, "swish": F.silu, "tanh": torch.tanh,
}


def probabilities(q, k, allowed=None, shared=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) over the keys [shared ; k]: (B, H, L, N + S). q (B, H, L, Dh), k (B, H, S, Dh).

    `shared` (ks, vs), each (G, H, N, Dh): keys/values common to each group of B / G consecutive rows (in
    cached decoding, an image's, which every beam and prompt of that image reads). The rows of a group go
    through one matmul against them as stacked queries, so they are never copied per row.
    `allowed` (.., L, N + S) True = may attend.
    """
    L = q.shape[2]
    scores = q @ k.transpose(-1, -2)  # (B, H, L, S)
    if shared is not None:
        ks = shared[0]
        qs = rearrange(q, "(g r) h l d -> g h (r l) d", g=ks.shape[0])  # every row of group g, as queries
        scores = torch.cat([rearrange(qs @ ks.transpose(-1, -2), "g h (r l) n -> (g r) h l n", l=L), scores], -1)
    scores = scores / math.sqrt(q.shape[-1])
    return (scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))).softmax(dim=-1)


def mix(p, v, shared=None) -> torch.Tensor:
    """Probabilities p (B, H, L, N + S) over [shared ; v] -> (B, H, L, Dh): the values they weigh."""
    if shared is None:
        return p @ v
    vs, L = shared[1], p.shape[2]
    N = vs.shape[2]
    ps = rearrange(p[..., :N], "(g r) h l n -> g h (r l) n", g=vs.shape[0])
    return rearrange(ps @ vs, "g h (r l) d -> (g r) h l d", l=L) + p[..., N:] @ v


class Attention(nn.Module):
    """Multi-head self-attention under a boolean mask (True = may attend, SDPA's convention): the only one.

    `kv`: a cache layer (generation/cache.py) while generating. Its `update(k, v, allowed)` stores this call's
    keys and values and returns (all keys, all values, shared keys/values or None) to attend over.
    `n_img`: how many of x's first tokens are image tokens (decoder.TextBlock's contract); GIT's attention
    treats both alike (the mask tells them apart), a variant need not. Inside `record.recording`, the
    probabilities are handed to the recording (record.attention).
    """

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b l (h d) -> b h l d", h=self.n_heads)

    def keys_values(self, x: torch.Tensor, *, n_img: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k_proj(x)), self.heads(self.v_proj(x))  # (B, H, L, Dh) each

    def forward(self, x, allowed=None, kv=None, *, n_img: int = 0) -> torch.Tensor:
        k, v = self.keys_values(x, n_img=n_img)
        shared = None
        if kv is not None:
            k, v, shared = kv.update(k, v, allowed)  # cached tokens + these
        q = self.heads(self.q_proj(x))
        if shared is None and not record.wants_maps():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        else:  # written out: the image's keys/values are shared by many rows, or the maps are asked for
            p = probabilities(q, k, allowed, shared)
            record.attention(self, p)
            out = mix(p, v, shared)
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)"))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = ACTIVATIONS[act]

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
