"""CLIP ViT image encoder (GIT's image encoder, taken from CLIP and kept pre-LayerNorm).

Shapes: the legend in model.py; here B counts images (video frames too), C channels, h x w the patch
grid, N1 = 1 + h*w tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import VisionConfig
from .layers import MLP, Attention


class VisionBlock(nn.Module):
    """Pre-LayerNorm transformer block: normalise, transform, add back.

        x ─┬─ ln_1 ─ attn ─(+)─┬─ ln_2 ─ mlp ─(+)─▶
           └───────────────────┘└──────────────────┘
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.attn = Attention(config.dim, config.n_heads)
        self.ln_2 = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.mlp = MLP(config.dim, config.mlp_dim, config.act)

    def forward(self, x) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        # NB: no bias on the patch embedding (CLIP).
        p = config.patch_size
        self.patch_embed = nn.Conv2d(config.n_channels, config.dim, p, stride=p, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(config.n_tokens, config.dim))  # (1 + grid*grid, Dv)
        self.ln_pre = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.n_layers))
        self.ln_post = nn.LayerNorm(config.dim, eps=config.ln_eps)

    def positions(self, h: int, w: int) -> torch.Tensor:
        """Learned positions for an h x w grid; bicubic interpolation of the trained grid for other sizes."""
        g = self.config.grid
        if (h, w) == (g, g):
            return self.pos_embed
        cls_pos, grid_pos = self.pos_embed[:1], self.pos_embed[1:]
        grid_pos = rearrange(grid_pos, "(gh gw) d -> 1 d gh gw", gh=g)
        grid_pos = F.interpolate(grid_pos, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, rearrange(grid_pos, "1 d h w -> (h w) d")])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N1, Dv). Intermediates: record.recording([encoder.blocks])."""
        p = self.config.patch_size
        if pixels.shape[-1] % p or pixels.shape[-2] % p:
            raise ValueError(f"image size {tuple(pixels.shape[-2:])} is not a multiple of the patch size {p}")
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype))  # (B, Dv, h, w)
        h, w = x.shape[-2:]
        x = rearrange(x, "b d h w -> b (h w) d")
        cls = self.cls_token.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positions(h, w))  # (B, N1, Dv)
        for block in self.blocks:
            x = block(x)
        # NB: ln_post normalises every token, not only the class token as in CLIP's pooled output.
        return self.ln_post(x)
