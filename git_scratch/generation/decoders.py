"""The model over the KV cache, or not, in two named stages: `prefill`, then one `decode_step` per token.

    prefill      the image tokens through the decoder once per image (their keys/values at every layer),
                 then every row's prompt (R, T): logits (R, V) at each row's last prompt token
    decode_step  one new token per row (R,) at text slot `pos` (R,): logits (R, V). Fixed shapes at every
                 step (R rows, S slots), so a compiler or a CUDA graph can wrap it

`Cached` runs the model's own embed_text / run / head over the cache (cache.py), so a change made in the
model reaches generation by itself; `Uncached` runs the full forward each step (the reference, and the
fallback when the mask breaks the cache). The searches (search.py, beam.py, original.py) take either.
Shapes: the legend in model.py.
"""

from __future__ import annotations

import warnings

import torch

from .cache import KVCache, why_inexact


class Cached:
    """Decoding over the KV cache: the model's own pieces, new tokens only."""

    def __init__(self, model, image: torch.Tensor, n_rows: int, mask: torch.Tensor,
                 image_of: torch.Tensor | None = None):
        """Buffers for `n_rows` rows decoding from `image` (Bi, N, D) under the model's `mask` (N + S, N + S).
        `image_of` (P,): images with different numbers of prompts, the image of each prompt (image-major);
        the image still goes through the decoder once, and each prompt's rows read a copy of its keys/values."""
        self.model, self.image = model, image
        groups = image.shape[0] if image_of is None else len(image_of)
        self.cache = KVCache.empty(model.config.text, groups, n_rows, mask, image.shape[1], image.dtype,
                                   image.device, image_of)

    def prefill_image(self) -> None:
        """The image tokens through the decoder alone, once per image: each layer's keys/values stay.
        The text reads only those, so the last block stops at its keys/values (its output would go unread)."""
        img_mask = self.image_mask()
        *blocks, last = self.model.blocks
        layers = self.cache.image_layers(img_mask)
        x, N = self.image, self.image.shape[1]
        for block, kv in zip(blocks, layers):
            x = block(x, img_mask, kv, n_img=N)  # every token an image token
        layers[-1].keep(*last.keys_values(x, n_img=N))

    def image_mask(self) -> torch.Tensor | None:
        """The image tokens' (N, N) mask among themselves; None when each sees every other: SDPA's fast path.
        (Its own method so that a traced graph, which cannot look at values, can be handed the answer.)"""
        N = self.image.shape[1]
        mask = self.cache.mask[:N, :N]
        return None if bool(mask.all()) else mask

    def hidden(self, ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """ids (R, n) in text slots start.. (start (R, 1)) -> decoder output (R, n, D); their keys/values stay."""
        slots, allowed = self.cache.positions(start, ids.shape[1])
        kv = self.cache.text_layers(slots, allowed)
        return self.model.run(self.model.embed_text(ids, start), allowed, kv, n_img=0)  # text only: image in kv

    def prefill(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The image, then right-padded prompts ids (R, T) of `lengths` (R,) -> logits (R, V) of their last tokens."""
        self.prefill_image()
        x = self.hidden(ids, torch.zeros(len(ids), 1, dtype=torch.long, device=ids.device))  # (R, T, D)
        return self.model.head(x[torch.arange(len(ids), device=ids.device), lengths - 1])

    def decode_step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tokens (R,) into text slots pos (R,) -> next-token logits (R, V)."""
        return self.model.head(self.hidden(tokens[:, None], pos[:, None])[:, 0])

    def reorder(self, rows: torch.Tensor) -> None:
        self.cache.reorder(rows)


class Uncached:
    """The whole sequence through `model.forward` at every step: the reference rollout, and the fallback
    for a model whose mask the cache cannot serve. Rows hold text slots as the cache does."""

    def __init__(self, model, image: torch.Tensor, n_rows: int, n_slots: int, image_of: torch.Tensor | None = None):
        image = image if image_of is None else image[image_of]  # (G, N, D): one per group of rows
        self.model, self.image = model, image.repeat_interleave(n_rows // image.shape[0], dim=0)
        self.seq = torch.zeros(n_rows, n_slots, dtype=torch.long, device=image.device)

    def logits(self, end: torch.Tensor) -> torch.Tensor:
        """Logits (R, V) at slot end - 1 of every row, over its first `end` (R,) slots."""
        T = int(end.max())
        keep = torch.arange(T, device=end.device) < end[:, None]  # later slots are padding (masked as keys)
        rows = torch.arange(len(end), device=end.device)
        return self.model(image=self.image, input_ids=self.seq[:, :T], attention_mask=keep).logits[rows, end - 1]

    def prefill(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        self.seq[:, : ids.shape[1]] = ids
        return self.logits(lengths)

    def decode_step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.seq[torch.arange(len(tokens), device=tokens.device), pos] = tokens
        return self.logits(pos + 1)

    def reorder(self, rows: torch.Tensor) -> None:
        self.seq = self.seq[rows]


def decoder(model, image: torch.Tensor, n_rows: int, n_slots: int, use_cache: bool = True, cached=None,
            image_of: torch.Tensor | None = None):
    """For n_rows rows of n_slots text slots from image (Bi, N, D): a cached decoder if `use_cache` and the
    model's mask allows a cache (cache.why_inexact; if not, a warning says why), else `Uncached`.
    `cached(model, image, n_rows, mask, image_of)` makes the cached one: `Cached`, compiled.compiled_decoder, or
    the model's own `cached_decoder` where it has one (a model run elsewhere: export/runtime.py's onnxruntime one).
    `image_of` (P,): the image of each prompt, when images have different numbers of prompts (every decoder
    takes it: the cached ones run each image through the decoder once, then give each prompt a copy)."""
    N = image.shape[1]
    mask = model.mask(N, n_slots, device=image.device)
    if use_cache and (why := why_inexact(mask, N)):
        warnings.warn(f"the model's mask does not allow a KV cache ({why}); decoding without one, slower")
    if use_cache and not why:
        return (cached or getattr(model, "cached_decoder", Cached))(model, image, n_rows, mask, image_of)
    return Uncached(model, image, n_rows, n_slots, image_of)
