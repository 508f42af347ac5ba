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


def show(n_img: int, n_txt: int) -> str:
    """The mask of n_img image and n_txt text tokens as the picture above, printed and returned: one row per
    query, one column per key, '#' may attend, '.' may not, a '|' between the image and the text.

        >>> _ = show(2, 3)
             i0 i1 | t0 t1 t2
         i0   #  # |  .  .  .
         i1   #  # |  .  .  .
        -----------+---------
         t0   #  # |  #  .  .
         t1   #  # |  #  #  .
         t2   #  # |  #  #  #
    """
    if n_img < 0 or n_txt < 0:
        raise ValueError(f"token counts must be >= 0, got {n_img} image, {n_txt} text")
    allowed = git_mask(n_img, n_txt)
    names = [f"i{j}" for j in range(n_img)] + [f"t{j}" for j in range(n_txt)]
    w = max((len(n) for n in names), default=2) + 1  # one column's width
    cells = [f"{n:>{w}}" for n in names]
    lines = [" " * w + " " + "".join(cells[:n_img]) + " |" + "".join(cells[n_img:])]
    for q, name in enumerate(names):
        if q == n_img and n_img:
            lines.append("-" * (w + 1 + w * n_img) + "-+" + "-" * (w * n_txt))
        marks = [f"{'#' if a else '.':>{w}}" for a in allowed[q].tolist()]
        lines.append(f"{name:>{w}} " + "".join(marks[:n_img]) + " |" + "".join(marks[n_img:]))
    text = "\n".join(lines)
    print(text)
    return text
