"""Speed tricks, kept out of the files a reader learns the model from: `apply(model)`, which `load` calls,
swaps in faster forms of the same computation. Each says why in one line; bench/RESULTS.md has the numbers.
A model built with `GIT(config)` runs without them (the reference path the parity tests read).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import MLP, quick_gelu

# The oneDNN route for Linear, on where measured faster (Xeon with AMX, EPYC Zen 4 with AVX-512): bench/RESULTS.md.
# Module-level so that `python -m bench --linear mkl|onednn` can compare the two routes.
ONEDNN = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
          and torch.backends.cpu.get_cpu_capability() == "AVX512")  # AMX CPUs report AVX512 too


class Linear(nn.Linear):
    """nn.Linear; on CPU (where ONEDNN), inference on 4 to 512 rows goes to oneDNN instead of MKL.

    Why: a few-row decode step is bound by reading the weights, which oneDNN does faster than MKL there.
    The same sums in another order, never under autograd, float32 error at MKL's level.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (not under torch.compile, which cannot trace this op and picks its own kernels)
        if ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled() \
                and not torch.compiler.is_compiling():
            if 4 <= x.numel() // x.shape[-1] <= 512:
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
