"""A decoder block of another kind, in user code: the text reads the image through cross-attention.

GIT's block runs one self-attention over [image ; text]. This one, the decoder block of an encoder-decoder
transformer (Vaswani et al. 2017), keeps the two apart: the text attends causally to the text, then
separately to the image tokens (a softmax of its own), then the MLP; the image tokens pass through every
block unchanged, so each block cross-attends to the projected image.

    txt ─┬─ attn(txt→txt) ─(+)─ ln_1 ─┬─ cross_attn(txt→img) ─(+)─ ln_cross ─┬─ mlp ─(+)─ ln_2 ─▶ txt
         └────────────────┘            └───────────────────────┘              └────────┘
    img ──────────────────────────────────────────────────────────────────────────────────────▶ img

It keeps the block contract (decoder.TextBlock's docstring) and nothing in git_scratch knows about it, yet
generation (cached and not), training, eval and the ONNX export run it: the cache stores, per block, what
the block hands its `kv` (here the image tokens' cross-attention keys/values, and the text's self-attention
ones). tests/test_examples.py runs it through all four.

    python examples/cross_attention.py              # a few training steps on the shapes task, then a caption
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from git_scratch import GIT
from git_scratch.config import TextConfig
from git_scratch.layers import MLP, Attention


def attend(q, k, v, allowed) -> torch.Tensor:
    """q (R, H, n, Dh) over k, v (G, H, N, Dh), each shared by a group of R / G consecutive rows (an image's,
    in cached decoding; G = R in the full forward), under `allowed` (.., n, N) -> (R, H, n, Dh)."""
    G, n = k.shape[0], q.shape[2]
    q = rearrange(q, "(g r) h l d -> g h (r l) d", g=G)  # every row of group g, as queries
    if allowed.ndim == 4:  # per-row mask rows (R, 1, n, N), grouped alike
        allowed = rearrange(allowed, "(g r) o l m -> g o (r l) m", g=G)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return rearrange(out, "g h (r l) d -> (g r) h l d", l=n)


class CrossAttentionBlock(nn.Module):
    """Text self-attention, cross-attention to the image tokens, MLP; post-LN as GIT's TextBlock."""

    def __init__(self, config: TextConfig):
        super().__init__()
        D, H = config.dim, config.n_heads
        self.attn = Attention(D, H)  # text -> text; its keys/values are the cache's text part
        self.ln_1 = nn.LayerNorm(D, eps=config.ln_eps)
        self.cross_attn = Attention(D, H)  # text -> image; its image keys/values are the cache's image part
        self.ln_cross = nn.LayerNorm(D, eps=config.ln_eps)
        self.mlp = MLP(D, config.mlp_dim, config.act)
        self.ln_2 = nn.LayerNorm(D, eps=config.ln_eps)

    def keys_values(self, x, *, n_img: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What this block keeps of the image tokens for the text to read: their cross-attention keys/values."""
        return self.cross_attn.keys_values(x[:, :n_img], n_img=n_img)

    def forward(self, x, allowed, kv=None, *, n_img: int) -> torch.Tensor:
        img, txt = x[:, :n_img], x[:, n_img:]  # (B, N, D), (B, T, D): n_img is 0 in a decode step
        if txt.shape[1] == 0:  # the cached image prefill: keep the image's keys/values; the image passes on
            if kv is not None:
                kv.update(*self.keys_values(img, n_img=n_img), allowed)
            return x
        a = self.attn
        q, k, v = a.heads(a.q_proj(txt)), *a.keys_values(txt)  # (B, H, T, Dh) each
        if kv is None:  # the full forward: the image tokens are in x; the mask rows of the text are ours
            k_img, v_img = self.keys_values(img, n_img=n_img)  # (B, H, N, Dh)
            rows = allowed[..., n_img:, :]  # (.., T, N + T)
        else:  # decoding: every text slot's keys/values, and the image's from the prefill (one per group)
            k, v, (k_img, v_img) = kv.update(k, v, allowed)
            rows = allowed  # (R, 1, n, N + S)
        N = k_img.shape[2]
        merge = lambda out: rearrange(out, "b h l d -> b l (h d)")  # noqa: E731
        txt = self.ln_1(txt + a.out_proj(merge(F.scaled_dot_product_attention(q, k, v, attn_mask=rows[..., N:]))))
        c = self.cross_attn
        q = c.heads(c.q_proj(txt))
        txt = self.ln_cross(txt + c.out_proj(merge(attend(q, k_img, v_img, rows[..., :N]))))
        txt = self.ln_2(txt + self.mlp(txt))
        return torch.cat([img, txt], dim=1)


def with_cross_attention(model: GIT) -> GIT:
    """Every decoder block of `model` replaced by a (fresh) CrossAttentionBlock: the whole change."""
    model.blocks = nn.ModuleList(CrossAttentionBlock(model.config.text) for _ in model.blocks)
    return model


def main() -> None:
    from git_scratch import GitConfig, init_weights
    from git_scratch.data import shapes
    from git_scratch.data.datasets import ShapesDataset
    from git_scratch.training.loop import TrainOptions, train

    model = init_weights(with_cross_attention(GIT(GitConfig.preset("shapes-tiny"))),
                         generator=torch.Generator().manual_seed(0))
    processor = shapes.processor()
    train(model, ShapesDataset(10**6, "both"), processor,
          TrainOptions(steps=50, batch_size=16, lr=1e-3, warmup=5, bf16="off", augment=False, save_every=50, keep=1,
                       log_every=10, progress=False), "runs/cross-attention")
    image, caption, _ = shapes.sample(shapes.VAL_OFFSET)
    pixels = torch.from_numpy(processor.pixel_values([image]))
    print("truth:", caption, "| model:", processor.batch_decode(model.eval().generate(pixels))[0])


if __name__ == "__main__":
    main()
