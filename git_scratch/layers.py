"""The two sub-layers both towers share: multi-head attention and the MLP.

Both towers use the same names (`attn.q_proj/k_proj/v_proj/out_proj`, `mlp.fc1/fc2`), so a reader
sees one attention and one MLP, and the weight table maps both towers onto them.
Shapes: B batch, L query tokens, S key tokens, D width, H heads, Dh = D / H.
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


# The activations `config.ACTIVATIONS` admits, as transformers' ACT2FN computes them.
_ACT = {
    "gelu": F.gelu,  # exact erf GELU (BERT)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def activation(name: str):
    try:
        return _ACT[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; supported: {', '.join(_ACT)}") from None


# oneDNN's linear, as torch's CPU builds ship it (Linear's fast path below)
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class Linear(nn.Linear):
    """nn.Linear, with one speed trick on CPU: inference on 4 to 512 rows goes to oneDNN instead of MKL.

    Speed only: the same sums in another order, never under autograd; float32 error against a float64
    result stays at MKL's (vision encoder, git-large shape: 1.2e-4 vs MKL's 1.0e-4 and transformers'
    1.0e-4 relative). Measured on a 2-core Xeon (AMX):
    - a decode step of a few rows (beams, a batch of captions) is bound by reading the weights, and MKL
      reads them at about half its one-row speed there, oneDNN closer to it. One pass over git-base's
      decoder and LM head weights (264 MB): 1 row 9.3 ms (MKL); 4 rows 19.2 ms MKL, 15.3 ms oneDNN;
      8 rows 24.9 / 17.1; 32 rows 30.3 / 24.3. One and two rows stay on MKL (2 rows: 9.5 / 14.1 ms).
    - one image through the vision encoder (197 or 257 rows): 10% faster (git-base 146 -> 131 ms,
      git-large 600 -> 539 ms). Above 512 rows (8 images) MKL is as fast or faster, and stays.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
            if 4 <= x.numel() // x.shape[-1] <= 512:
                return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")
        return super().forward(x)


class Attention(nn.Module):
    """Multi-head self-attention with a boolean mask (True = may attend, SDPA's convention).

    `kv` is an optional cache layer: an object whose `update(k, v)` stores this call's keys and values
    and returns all keys and values to attend over (see cache.py). Without it, keys = queries' tokens.
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

    def forward(self, x, allowed=None, kv=None, return_weights: bool = False):
        q, k, v = self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))
        if kv is not None:
            k, v = kv.update(k, v)  # (B, H, S, Dh): cached tokens + these
        if return_weights:  # the explicit form, for users who inspect attention maps
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, L, S)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
            weights = scores.softmax(dim=-1)
            out = weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = self.out_proj(rearrange(out, "b h l d -> b l (h d)"))
        return (out, weights) if return_weights else out


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)
        self.act = activation(act)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
