"""The decoding cache: image keys/values computed once per image and shared, text keys/values by slot.

It is exact because of the mask (`why_inexact` checks it first): image tokens never see the text, so
their keys/values at every layer depend on the image alone, computed once and shared by every row decoded
from it (prompts, beams, samples); text is causal, so a text token's keys/values never change once written.

    img   (n_layers, 2, G, H, N, Dh)    one entry per *group* of rows: an image's rows, image-major (repeat_interleave
                                        order); when images have different numbers of prompts, a prompt's rows
                                        (image_of (G,): the image of each group, its entry a copy of that image's)
    txt   (n_layers, 2, R,  H, S, Dh)   S preallocated text slots, one entry per *row*
    mask  (N + S, N + S)                the model's mask (GIT.mask); a token in text slot s reads row N + s

The model's own blocks run over it: each block's attention gets a cache layer as `kv` (layers.Attention),
which stores the new keys/values and hands back what to attend over, the image's as `shared`, never copied.
Prompts are right-padded: row r's new token i goes to slot len_r + i, over the padding; under the causal
mask a real token in slot s reads slots <= s, all real by then, so no padding mask is needed.
decoders.py runs the model over it. Shapes: the legend in model.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TextConfig


def why_inexact(mask: torch.Tensor, n_img: int) -> str | None:
    """Why a KV cache would decode differently from the full forward under this (L, L) mask, or None."""
    txt = mask[n_img:, n_img:]
    img_sees_text, text_sees_later = torch.stack([mask[:n_img, n_img:].any(), (txt & ~txt.tril()).any()]).tolist()
    if img_sees_text:  # (one host read for both: on a GPU, each read waits for the device)
        return "image tokens attend to text, so their keys/values would change with every new token"
    if text_sees_later:
        return "text tokens attend to later text, so earlier tokens' keys/values would change"
    return None


class CacheMisuse(RuntimeError):
    """A block attended under a mask other than the model's: the cache cannot know what that means."""


@dataclass
class KVCache:
    img: torch.Tensor  # (n_layers, 2, G, H, N, Dh)
    txt: torch.Tensor  # (n_layers, 2, R, H, S, Dh)
    mask: torch.Tensor  # (N + S, N + S) bool, the model's mask (GIT.mask)
    image_of: torch.Tensor | None = None  # (G,) the image of each group; None: group g is image g
    spare: torch.Tensor | None = None  # beams only: reorder's target, swapped with txt

    @classmethod
    def empty(cls, config: TextConfig, n_groups: int, n_rows: int, mask: torch.Tensor, n_img_tokens: int,
              dtype: torch.dtype, device, image_of: torch.Tensor | None = None) -> KVCache:
        """Zeroed buffers for `n_rows` rows in `n_groups` groups (an image's rows, or a prompt's when `image_of`
        names each group's image), under `mask` (N + S, N + S)."""
        if n_rows % n_groups:
            raise ValueError(f"{n_rows} rows cannot be split evenly over {n_groups} groups (images, or prompts)")
        H, Dh, S = config.n_heads, config.dim // config.n_heads, mask.shape[0] - n_img_tokens
        # zeros, not empty: unwritten slots are masked out of the softmax, but 0 * NaN garbage would still be NaN
        img = torch.zeros(config.n_layers, 2, n_groups, H, n_img_tokens, Dh, dtype=dtype, device=device)
        txt = torch.zeros(config.n_layers, 2, n_rows, H, S, Dh, dtype=dtype, device=device)
        return cls(img, txt, mask, image_of)

    def positions(self, start: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n tokens per row from text slot `start` (R, 1) on -> (slots (R, n), mask rows (R, 1, n, N + S)).
        NB: the one place positions are decided: text slot t = text position t (pass `start` to `embed_text`)
        = cache/mask position N + t."""
        slots = start + torch.arange(n, device=start.device)  # (R, n)
        return slots, self.mask[self.img.shape[-2] + slots][:, None]

    def image_layers(self, allowed) -> list[_ImageLayer]:
        """One `kv` per block while the image tokens run through the decoder alone, under `allowed`."""
        return [_ImageLayer(self.img[i], allowed, self.image_of) for i in range(len(self.img))]

    def text_layers(self, slots: torch.Tensor, allowed: torch.Tensor) -> list[_TextLayer]:
        """One `kv` per block for text tokens in `slots` (R, n) under mask rows `allowed` (from `positions`)."""
        return [_TextLayer(self.txt[i], self.img[i], slots, allowed) for i in range(len(self.txt))]

    def reorder(self, rows: torch.Tensor, in_place: bool = False) -> None:
        """Beam re-ranking: row r takes the text keys/values of row rows[r]; the image part is untouched.
        Gathered into a second buffer that then swaps with the first: one copy and no allocation per step.
        `in_place`: copied back instead of swapped, so `txt` stays the same tensor (a captured CUDA graph's)."""
        if self.spare is None:
            self.spare = torch.empty_like(self.txt)
        torch.index_select(self.txt, 2, rows, out=self.spare)
        if in_place:
            self.txt.copy_(self.spare)
        else:
            self.txt, self.spare = self.spare, self.txt


def _check(allowed, expected) -> None:
    if allowed is not expected:  # an identity check: free, and exact
        raise CacheMisuse("a decoder block attended under a mask other than the one the model gave it, so the "
                          "KV cache cannot know which keys each token sees; generate with use_cache=False")


class _ImageLayer:
    def __init__(self, store: torch.Tensor, allowed, image_of: torch.Tensor | None = None):
        self.store, self.allowed, self.image_of = store, allowed, image_of  # store: (2, G, H, N, Dh), a view

    def keep(self, k, v) -> None:
        """The image tokens' keys/values (Bi, H, N, Dh) at this layer, for every later text token to read:
        one copy per group (image_of), computed once per image."""
        if self.image_of is not None:
            k, v = k[self.image_of], v[self.image_of]  # (G, H, N, Dh)
        self.store[0].copy_(k)
        self.store[1].copy_(v)

    def update(self, k, v, allowed):
        _check(allowed, self.allowed)
        self.keep(k, v)
        return k, v, None  # the image tokens attend to each other only: nothing cached before them


class _TextLayer:
    def __init__(self, txt: torch.Tensor, img: torch.Tensor, slots: torch.Tensor, allowed: torch.Tensor):
        self.txt, self.img, self.slots, self.allowed = txt, img, slots, allowed  # txt (2, R, H, S, Dh)

    def update(self, k, v, allowed):
        """k, v (R, H, n, Dh) of tokens in `slots` -> every row's text keys/values + the shared image ones."""
        _check(allowed, self.allowed)
        rows = torch.arange(k.shape[0], device=k.device)[:, None]  # (R, 1), broadcast against slots (R, n)
        self.txt[0][rows, :, self.slots] = k.transpose(1, 2)  # advanced indices first: target is (R, n, H, Dh)
        self.txt[1][rows, :, self.slots] = v.transpose(1, 2)
        return self.txt[0], self.txt[1], (self.img[0], self.img[1])
