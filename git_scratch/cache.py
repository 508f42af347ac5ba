"""The decoding cache: image keys/values computed once per image and shared, text keys/values by slot.

GIT decodes over one stream `[image ; text]`. The image tokens never see the text (mask.py), so their
keys and values at every layer depend on the image alone: they are computed once per image and
shared by every row decoded from it (several prompts, beams, returned sequences). Only the text part
grows, one token per step, and is different per row.

    img   (n_layers, 2, Bi, H, N, Dh)   k and v of the N image tokens, one entry per *image*
    txt   (n_layers, 2, R,  H, S, Dh)   k and v of S preallocated text slots, one entry per *row*
    mask  (N + S, N + S)                git_mask(N, S); a token in text slot s reads row N + s

Rows are image-major: rows `i*k .. i*k + k-1` (k = R / Bi) decode from image i, which is the order
of `repeat_interleave` used for beams and returned sequences.

Position bookkeeping, in one place (`positions`): text slot s is the token's text position (0 at
[CLS]), so its mask row is N + s and its position embedding index is s. Prompts of different lengths
are right-padded: row r's new token i goes to slot len_r + i, overwriting the padding. Under the
causal mask a real token in slot s reads slots <= s only, all real by then, so no padding mask is
needed (the prefill's pad queries do read pads, but their outputs are never used).

Why not one SDPA call: SDPA takes one key tensor per row, so the shared image keys would have to be
copied next to each row's text keys at every step (k copies per image for k beams). Instead the
scores against the image keys are one batched matmul per image, with all k rows of that image stacked
as queries; the text scores are per row; both are concatenated to (R, H, L, N + S) and go through
one softmax under the git_mask rows, as in the picture in mask.py. The image K/V are never copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange

from .config import TextConfig
from .mask import git_mask


@dataclass
class KVCache:
    img: torch.Tensor  # (n_layers, 2, Bi, H, N, Dh)
    txt: torch.Tensor  # (n_layers, 2, R, H, S, Dh)
    mask: torch.Tensor  # (N + S, N + S) bool, git_mask(N, S)
    spare: torch.Tensor | None = None  # beams only: reorder's target, swapped with txt

    @classmethod
    def empty(cls, cfg: TextConfig, n_images: int, n_rows: int, n_img_tokens: int, n_slots: int,
              dtype: torch.dtype, device) -> KVCache:
        """Zeroed buffers for `n_rows` rows decoding from `n_images` images, `n_slots` text tokens each."""
        if n_rows % n_images:
            raise ValueError(f"{n_rows} rows cannot be split evenly over {n_images} images")
        H, Dh = cfg.n_heads, cfg.dim // cfg.n_heads
        # zeros, not empty: unwritten slots are masked out of the softmax, but 0 * NaN garbage would still be NaN
        img = torch.zeros(cfg.n_layers, 2, n_images, H, n_img_tokens, Dh, dtype=dtype, device=device)
        txt = torch.zeros(cfg.n_layers, 2, n_rows, H, n_slots, Dh, dtype=dtype, device=device)
        return cls(img, txt, git_mask(n_img_tokens, n_slots, device=device))

    @property
    def n_img_tokens(self) -> int:
        return self.img.shape[-2]

    @property
    def n_slots(self) -> int:
        return self.txt.shape[-2]

    def positions(self, start: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n tokens per row from text slot `start` (R, 1) on -> (slots (R, n), mask rows (R, 1, n, N + S)).

        NB: the one place where positions are decided: the token in text slot t has text position t
        (its position embedding index: pass `start` to `embed_text`) and cache/mask position N + t.
        """
        slots = start + torch.arange(n, device=start.device)  # (R, n)
        return slots, self.mask[self.n_img_tokens + slots][:, None]

    def image_writer(self, layer: int) -> _ImageWriter:
        """The `kv` hook for `Attention.forward` while the image tokens run through the decoder once."""
        return _ImageWriter(self.img[layer])

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam re-ranking: row r takes the text keys/values of row rows[r]; the image part is untouched.

        Gathered into a second buffer that then swaps with the first: one copy and no allocation per step.
        """
        if self.spare is None:
            self.spare = torch.empty_like(self.txt)
        torch.index_select(self.txt, 2, rows, out=self.spare)
        self.txt, self.spare = self.spare, self.txt


class _ImageWriter:
    def __init__(self, store: torch.Tensor):
        self.store = store  # (2, Bi, H, N, Dh), a view into KVCache.img

    def update(self, k: torch.Tensor, v: torch.Tensor):
        self.store[0].copy_(k)
        self.store[1].copy_(v)
        return k, v  # the image tokens attend to each other only: nothing cached before them


def cached_attention(attn, x: torch.Tensor, cache: KVCache, layer: int, slots: torch.Tensor,
                     allowed: torch.Tensor) -> torch.Tensor:
    """Text tokens x (R, L, D) in text slots `slots` (R, L) through `attn` (a layers.Attention).

    Writes their keys/values into the cache, then attends over the shared image keys and the row's
    text keys. `allowed` (R, 1, L, N + S): the git_mask rows of these slots (from `positions`).
    """
    R, L, _ = x.shape
    Bi, N = cache.img.shape[2], cache.n_img_tokens
    q, k, v = attn.heads(attn.q_proj(x)), attn.heads(attn.k_proj(x)), attn.heads(attn.v_proj(x))  # (R, H, L, Dh)
    txt_k, txt_v = cache.txt[layer]  # (R, H, S, Dh) each
    rows = torch.arange(R, device=x.device)[:, None]  # (R, 1), broadcast against slots (R, L)
    txt_k[rows, :, slots] = k.transpose(1, 2)  # advanced indices first: target is (R, L, H, Dh)
    txt_v[rows, :, slots] = v.transpose(1, 2)
    img_k, img_v = cache.img[layer]  # (Bi, H, N, Dh) each, shared by the k = R / Bi rows of each image

    q_img = rearrange(q, "(b k) h l d -> b h (k l) d", b=Bi)  # every row of image b, stacked as queries
    s_img = rearrange(q_img @ img_k.transpose(-1, -2), "b h (k l) n -> (b k) h l n", l=L)  # (R, H, L, N)
    s_txt = q @ txt_k.transpose(-1, -2)  # (R, H, L, S)
    scores = torch.cat([s_img, s_txt], dim=-1) / math.sqrt(q.shape[-1])  # (R, H, L, N + S): keys [image ; text]
    p = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)  # never all -inf: the image is always allowed

    p_img = rearrange(p[..., :N], "(b k) h l n -> b h (k l) n", b=Bi)
    out = rearrange(p_img @ img_v, "b h (k l) d -> (b k) h l d", l=L) + p[..., N:] @ txt_v  # (R, H, L, Dh)
    return attn.out_proj(rearrange(out, "r h l d -> r l (h d)"))
