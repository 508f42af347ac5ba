"""The three graphs an ONNX export holds, as torch modules that run the model's own code over explicit caches.

    image_encoder   pixel_values (Bi, 3, H, W)                      -> image (Bi, N, D)
                    video checkpoints: (Bi, F, 3, H, W), F = n_frames
    image_prefill   image (Bi, N, D)                                -> image_kv (n_layers, 2, Bi, H, N, Dh)
    decoder_step    ids (Bi, K, n), start (Bi, K), last (Bi, K),    -> logits (Bi, K, V),
                    text_kv (n_layers, 2, Bi, K, H, S, Dh),            text_kv_out (n_layers, 2, Bi, K, H, S, Dh)
                    image_kv (n_layers, 2, Bi, H, N, Dh)

The rows are given as (Bi, K), K rows per image (prompts x beams), not as R = Bi * K: the step reads each
image's keys/values once for its K rows (layers.probabilities' grouped matmul), which splits R by Bi, and a
traced graph can split R only if it is built as Bi * K. Row (i, k) writes its n tokens into its text slots
start, start + 1, .. and gets the logits of token `last`: the prompts' prefill (start 0, last = length - 1)
and each new token (n = 1, last 0) are one graph.

They run generation/decoders.py's `Cached` itself (prefill_image, hidden) and the model's head over a
`KVCache` made of the inputs, so the graphs compute what the torch decoder does, op for op.
Shapes: the legend in model.py; K rows per image, n new tokens per row, S text slots.
"""

from __future__ import annotations

import torch
from torch import nn

from ..generation.cache import KVCache
from ..generation.decoders import Cached


class _Over(Cached):
    """`Cached` over a cache made of the graph's inputs, not one it allocates; the image tokens' own mask
    decided before tracing (`image_mask` reads tensor values, which a traced graph cannot)."""

    def __init__(self, model, cache: KVCache, image: torch.Tensor | None, image_mask: torch.Tensor | None):
        self.model, self.cache, self.image, self._image_mask = model, cache, image, image_mask

    def image_mask(self) -> torch.Tensor | None:
        return self._image_mask


class ImageEncoder(nn.Module):
    """pixel_values -> image tokens (Bi, N, D): the vision tower, the projection (and the frames' time)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


class ImagePrefill(nn.Module):
    """image (Bi, N, D) -> image_kv (n_layers, 2, Bi, H, N, Dh): Cached.prefill_image's keys/values."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        N = model.config.n_img_tokens
        mask = model.mask(N, 0)  # the image rows of the mask: a function of N alone, decided here
        self.image_mask = None if bool(mask.all()) else mask

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        Bi, N = image.shape[:2]
        cache = KVCache.empty(self.model.config.text, Bi, Bi, self.model.mask(N, 0, device=image.device), N,
                              image.dtype, image.device)
        _Over(self.model, cache, image, self.image_mask).prefill_image()
        return cache.img


class DecoderStep(nn.Module):
    """New text tokens of every row over the caches -> (their last logits, the text cache with them written)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, start, last, text_kv, image_kv) -> tuple[torch.Tensor, torch.Tensor]:
        Bi, K, n = ids.shape
        N, S = image_kv.shape[-2], text_kv.shape[-2]
        # The text cache as a list of (keys, values) per layer, each (R, H, S, Dh) and a copy (written in place),
        # where KVCache holds one tensor: cache.py reads txt[i][0] and txt[i][1] alike, and each write is then a
        # small ScatterND. Into one (n_layers, 2, R, H, S, Dh) tensor, each of a step's 2 x n_layers writes became
        # a ScatterElements rewriting the whole cache: 36 of the step's 55 ms on git-base (onnxruntime's
        # profiler; 1 row, 41 slots, 2 threads); bench/onnx.py's step went from 64.5 to 9.5-11.9 ms.
        rows = text_kv.flatten(2, 3)  # (n_layers, 2, R, H, S, Dh)
        txt = [(layer[0].clone(), layer[1].clone()) for layer in rows]
        cache = KVCache(image_kv, txt, self.model.mask(N, S, device=ids.device))
        x = _Over(self.model, cache, None, None).hidden(ids.flatten(0, 1), start.reshape(Bi * K, 1))  # (R, n, D)
        x = x[torch.arange(Bi * K, device=ids.device), last.flatten()]  # (R, D): each row's token `last`
        logits = self.model.head(x)  # (R, V)
        txt_out = torch.stack([torch.stack(kv) for kv in txt])  # (n_layers, 2, R, H, S, Dh), the writes in it
        return logits.unflatten(0, (Bi, K)), txt_out.unflatten(2, (Bi, K))
