"""`generate(..., compile=True)`: the decode step compiled, and on CUDA replayed from a CUDA graph.

A speed trick, kept out of decoders.py (where a reader learns decoding). Both forms run
`Cached.decode_step` itself, unchanged, so the ids equal the eager path's token for token (tests).

    CPU    torch.compile(Cached.decode_step, fullgraph=True, dynamic=False): compiled once per shape (rows R,
           text slots S, image tokens N, dtype); torch keeps the compiled code and reuses it for later calls
    CUDA   the eager step captured once per shape in a torch.cuda.CUDAGraph and replayed for every token: one
           launch instead of ~180 kernel launches. The graph is bound to the cache buffers and the input and
           output tensors it was captured with, so those live with it in GRAPHS (per model, per shape, the
           MAX_GRAPHS most recent) and later calls of that shape reuse them: no capture, no allocation.

Why not torch.compile(mode="reduce-overhead") on CUDA: inductor skips CUDA graphs for a step that writes
into its inputs (the cache's text buffers), which leaves it launch-bound; the explicit capture does not.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch

from .decoders import Cached

MAX_GRAPHS = 4  # captured shapes kept per model: each holds its cache buffers on the GPU
GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> OrderedDict(shape -> GraphCached)
_compiled = None


def compiled_step():
    """Cached.decode_step under torch.compile, made once per process (torch caches per shape)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(Cached.decode_step, fullgraph=True, dynamic=False)
    return _compiled


class CompiledCached(Cached):
    """Cached, with decode_step compiled (any device)."""

    def decode_step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return compiled_step()(self, tokens, pos)


class GraphCached(Cached):
    """Cached, with decode_step replayed from a CUDA graph captured over this object's own buffers."""

    def __init__(self, model, image: torch.Tensor, n_rows: int, mask: torch.Tensor,
                 image_of: torch.Tensor | None = None):
        super().__init__(model, image, n_rows, mask, image_of)
        self.tokens = torch.zeros(n_rows, dtype=torch.long, device=image.device)  # the graph's inputs
        self.pos = torch.zeros(n_rows, dtype=torch.long, device=image.device)
        # Warm up on a side stream (CUDA's rule for capture), then capture. Both write text slot 0, which every
        # prefill writes again before any token reads it.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                Cached.decode_step(self, self.tokens, self.pos)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = Cached.decode_step(self, self.tokens, self.pos)  # (R, V), the graph's output

    def decode_step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """As Cached.decode_step; the logits are the graph's output buffer, overwritten by the next step."""
        self.tokens.copy_(tokens)
        self.pos.copy_(pos)
        self.graph.replay()
        return self.logits

    def reorder(self, rows: torch.Tensor) -> None:
        self.cache.reorder(rows, in_place=True)  # the graph reads the buffer it was captured with


def compiled_decoder(model, image: torch.Tensor, n_rows: int, mask: torch.Tensor,
                     image_of: torch.Tensor | None = None) -> Cached:
    """A compiled `Cached` for these shapes: on CUDA a captured graph (reused when this shape was seen)."""
    if image.device.type != "cuda":
        return CompiledCached(model, image, n_rows, mask, image_of)
    groups = image.shape[0] if image_of is None else len(image_of)  # the cache's image entries (cache.py)
    key = (image.shape[0], groups, n_rows, tuple(mask.shape), image.dtype, image.device)
    graphs = GRAPHS.setdefault(model, OrderedDict())
    if key in graphs:
        graphs.move_to_end(key)
        dec = graphs[key]
        # the same shapes; prefill writes this image's keys/values into the graph's buffers
        dec.image, dec.cache.image_of = image, image_of
        return dec
    dec = graphs[key] = GraphCached(model, image, n_rows, mask, image_of)
    if len(graphs) > MAX_GRAPHS:
        graphs.popitem(last=False)
    return dec
