"""The GIT attention mask: the one idea that turns a BERT encoder into an image-to-text decoder.

One sequence `[image tokens ; text tokens]` goes through one transformer. The mask decides who sees whom:

                keys:  img (N)   txt (T)
    queries img (N) [    1         0     ]   image tokens see each other, never the text
            txt (T) [    1       tril    ]   text sees every image token and the text up to itself

True means *may attend* (the convention of torch's scaled_dot_product_attention). Shapes: the legend in model.py.
"""

from __future__ import annotations

import torch


def git_mask(n_img: int, n_txt: int, device=None) -> torch.Tensor:
    """(L, L) bool, L = n_img + n_txt; row = query, column = key."""
    L = n_img + n_txt
    allowed = torch.ones(L, L, dtype=torch.bool, device=device).tril()  # text: causal
    allowed[:, :n_img] = True  # everyone sees the whole image (image tokens: bidirectional)
    allowed[:n_img, n_img:] = False  # the image never sees the text
    return allowed


def with_padding(allowed: torch.Tensor, n_img: int, text_keep: torch.Tensor | None) -> torch.Tensor:
    """Remove padded text tokens as *keys* (B, 1, L, S). `text_keep` (B, T_keys): 1 = real token.

    Only keys are masked, so no query row is ever empty: every row still sees the image.
    """
    if text_keep is None:
        return allowed
    B = text_keep.shape[0]
    keep = torch.cat([torch.ones(B, n_img, dtype=torch.bool, device=text_keep.device), text_keep.bool()], dim=1)
    return allowed & keep[:, None, None, :]  # (B, 1, L, S)
