"""Speed tricks, kept out of the files a reader learns the model from: `apply(model)`, which `load` calls,
swaps in faster forms of the same computation. Each says why in one line; bench/RESULTS.md has the numbers.
A model built with `GIT(config)` runs without them (the reference path the parity tests read).
`one_image_a_call(encoder)`, which `load` calls for dtype "bfloat16-vision", trades a little speed for results
that never depend on their batch.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from .layers import MLP, quick_gelu
from .vision import VisionEncoder

# The inference rows (first, last) Linear sends to oneDNN instead of MKL, by the CPU's vector width as torch reports
# it, where measured faster (bench/RESULTS.md); None: MKL for every row count. Module-level so that
# `python -m bench --linear mkl|onednn` can compare the two routes.
ONEDNN_ROWS = {
    "AVX512": (4, 512),  # EPYC Zen 4 (AMX Xeons report AVX512 too): beams 0.66x, the vision encoder 0.82x the time
    "AVX2": (1, 64),  # EPYC Zen 3: decode steps of 1 / 4 / 16 / 64 rows 0.81 / 0.61 / 0.77 / 0.91x the time; at
                      # 100 rows even, at the vision encoder's 197 rows 1.08x: MKL from 65 rows on
}.get(torch.backends.cpu.get_cpu_capability()) if (torch.backends.mkldnn.is_available()
                                                   and hasattr(torch.ops.mkldnn, "_linear_pointwise")) else None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them ("avx512_vnni", "amx_bf16", ...); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines()
                           if line.startswith("flags")), []))


class Linear(nn.Linear):
    """nn.Linear; on CPU, inference on ONEDNN_ROWS rows goes to oneDNN instead of MKL.

    Why: a few-row decode step is bound by reading the weights, which oneDNN does faster than MKL there.
    The same sums in another order, never under autograd, float32 error at MKL's level.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (not under torch.compile, which cannot trace this op and picks its own kernels)
        if ONEDNN_ROWS and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled() \
                and not torch.compiler.is_compiling():
            if ONEDNN_ROWS[0] <= x.numel() // x.shape[-1] <= ONEDNN_ROWS[1]:
                return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")
        return super().forward(x)


def quick_gelu_inplace(x: torch.Tensor) -> torch.Tensor:
    """quick_gelu without autograd in one buffer instead of three: exact (the same products, bit for bit).
    Why: fresh large buffers cost page faults on CPU; measured 4% off the vision encoder for 8 images."""
    if x.requires_grad:
        return quick_gelu(x)
    return torch.sigmoid_(1.702 * x).mul_(x)


def apply(model: nn.Module) -> nn.Module:
    """The tricks above, in place: parameters, their names and the state dict are untouched."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = Linear  # a subclass with no state of its own: only `forward` changes
        if isinstance(module, MLP) and module.act is quick_gelu:
            module.act = quick_gelu_inplace
    return model


def applied(model: nn.Module) -> bool:
    """True where `apply` or `one_image_a_call` changed a module of `model`."""
    return any(isinstance(m, (Linear, OneImageACall)) or getattr(m, "act", None) is quick_gelu_inplace
               for m in model.modules())


class OneImageACall(VisionEncoder):
    """VisionEncoder, one image (or video frame) per call: an image's features are those it gets alone, whatever
    was encoded beside it. Why: oneDNN's bfloat16 products round differently with their number of rows (a
    bfloat16 step apart at 2 images or more of git-base), so in a batch an image's caption could change;
    measured at git-base on an AMX Xeon, one image a call costs 60 ms an image against 47 batched."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        encode = super().forward
        return encode(pixels) if len(pixels) <= 1 else torch.cat([encode(p[None]) for p in pixels])  # (B, N1, Dv)


def one_image_a_call(encoder: VisionEncoder) -> VisionEncoder:
    """`encoder`, in place, encoding each image by itself (OneImageACall); its parameters are untouched."""
    encoder.__class__ = OneImageACall
    return encoder
