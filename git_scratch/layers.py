"""The two sub-layers both towers share: multi-head attention and the MLP.

Both towers use the same names (`attn.q_proj/k_proj/v_proj/out_proj`, `mlp.fc1/fc2`), so a reader
sees one attention and one MLP, and the weight table maps both towers onto them.
Shapes: the legend in model.py (L query tokens, S key tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    # NB: CLIP's sigmoid approximation of GELU; the vision tower of every GIT checkpoint uses it.
    if x.requires_grad:
        return x * torch.sigmoid(1.702 * x)
    # Speed (exact: the same products, bit for bit): without autograd, one buffer instead of three.
    # Fresh large buffers cost page faults on CPU; measured 4% off the vision encoder for 8 images.
    return torch.sigmoid_(1.702 * x).mul_(x)


# The activations a config may name (constants.ACTIVATIONS), as transformers' ACT2FN computes them.
ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU (BERT)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "relu": F.relu, "silu": F.silu, "swish": F.silu, "tanh": torch.tanh,
}


# Linear's speed path, on where measured faster (Xeon with AMX, EPYC Zen 4 with AVX-512): bench/RESULTS.md.
_ONEDNN = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
           and torch.backends.cpu.get_cpu_capability() == "AVX512")  # AMX CPUs report AVX512 too


class Linear(nn.Linear):
    """nn.Linear; on CPU (where _ONEDNN), inference on 4 to 512 rows goes to oneDNN instead of MKL.

    Speed only: the same sums in another order, never under autograd, float32 error at MKL's level.
    A few-row decode step is bound by reading the weights, which oneDNN does faster than MKL there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
            if 4 <= x.numel() // x.shape[-1] <= 512:
                return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")
        return super().forward(x)


def attend(q, k, v, allowed=None, shared=None, maps=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) v over the keys [shared ; k], written out. q (B, H, L, Dh), k/v (B, H, S, Dh).

    `shared` (ks, vs), each (G, H, N, Dh): keys/values common to each group of B / G consecutive rows (in
    cached decoding, an image's, which every beam and prompt of that image reads). The rows of a group go
    through one matmul against them as stacked queries, so they are never copied per row.
    `allowed` (.., L, N + S) True = may attend; `maps`: a list the probabilities (B, H, L, N + S) are appended to.
    """
    L = q.shape[2]
    scores = q @ k.transpose(-1, -2)  # (B, H, L, S)
    if shared is not None:
        ks, vs = shared
        qs = rearrange(q, "(g r) h l d -> g h (r l) d", g=ks.shape[0])  # every row of group g, as queries
        scores = torch.cat([rearrange(qs @ ks.transpose(-1, -2), "g h (r l) n -> (g r) h l n", l=L), scores], -1)
    scores = scores / math.sqrt(q.shape[-1])
    p = (scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))).softmax(dim=-1)
    if maps is not None:
        maps.append(p)
    if shared is None:
        return p @ v
    N = ks.shape[2]
    ps = rearrange(p[..., :N], "(g r) h l n -> g h (r l) n", g=ks.shape[0])
    return rearrange(ps @ vs, "g h (r l) d -> (g r) h l d", l=L) + p[..., N:] @ v  # (B, H, L, Dh)


class Attention(nn.Module):
    """Multi-head self-attention under a boolean mask (True = may attend, SDPA's convention): the only one.

    `kv`: a cache layer (cache.py) while generating. Its `update(k, v, allowed)` stores this call's keys and
    values and returns (all keys, all values, shared keys/values or None) to attend over.
    `maps`: a list; when given, each call appends its attention probabilities (B, H, L, S).
    """

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = Linear(dim, dim)
        self.k_proj = Linear(dim, dim)
        self.v_proj = Linear(dim, dim)
        self.out_proj = Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b l (h d) -> b h l d", h=self.n_heads)

    def forward(self, x, allowed=None, kv=None, maps=None) -> torch.Tensor:
        k, v, shared = self.heads(self.k_proj(x)), self.heads(self.v_proj(x)), None  # (B, H, L, Dh)
        if kv is not None:
            k, v, shared = kv.update(k, v, allowed)  # cached tokens + these
        q = self.heads(self.q_proj(x))
        if shared is None and maps is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        else:
            out = attend(q, k, v, allowed, shared, maps)
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)"))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)
        self.act = ACTIVATIONS[act]

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
