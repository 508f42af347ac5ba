"""How a loaded model computes: one `Precision`, resolved once from (device, dtype, quantize).

    device     "cpu", "cuda", "cuda:N", "mps", "auto" or None (= auto; with quantize, the CPU)
    dtype      "float32" (None), "bfloat16", "float16": the whole model; "bfloat16-vision": the vision encoder in
               bfloat16 one image a call, the decoder float32; "auto": bfloat16 where the hardware is fast at it.
               With quantize, the vision encoder's alone (the decoder stays float32 around its int8 products).
    quantize   None, or "int8": the decoder blocks' Linears and the LM head with int8 weights (CPU only)

`load` builds the plain model and applies what the Precision names; results record `precision.settings()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import fast, quantize as quantizing
from .constants import BF16_VISION, DTYPE_NAMES

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}  # "float32" -> torch.float32, ...


def fast_bf16(device: torch.device) -> bool:
    """True where bfloat16 matmuls beat float32: CUDA with bf16 support, or a CPU with AMX/AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(fast.cpu_flags() & {"amx_bf16", "avx512_bf16"})
    return False


def resolve_device(device) -> torch.device:
    """None / "auto": CUDA, else Apple's MPS, else the CPU; any other name as torch reads it."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


DEVICES = "auto, cpu, cuda, cuda:N or mps"


def check_device(name) -> torch.device:
    """--device as a torch.device ("auto": the best there is); ValueError naming --device, before any model
    is built, for a name torch does not know or a device this machine lacks."""
    if name in (None, "auto"):
        return resolve_device(name)
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {name!r}: not a device; use {DEVICES}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"--device {name}: no CUDA device available to this torch ({torch.__version__})")
        if device.index is not None and device.index >= n:
            raise ValueError(f"--device {name}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
        return device
    if device.type == "mps":
        ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    else:  # xpu and the like: the backend module says
        backend = getattr(torch, device.type, None)
        ok = callable(getattr(backend, "is_available", None)) and backend.is_available()
    if not ok:
        raise ValueError(f"--device {name}: not available on this machine")
    return device


@dataclass(frozen=True)
class Precision:
    """What a model is loaded as: where, in which dtype, quantised or not. Made by `precision(...)`."""

    device: torch.device
    dtype: str  # "float32", "bfloat16", "float16" or "bfloat16-vision" ("auto" resolved): what results record
    quantize: str | None = None  # "int8": the decoder's Linears and the head (quantize.py)

    @property
    def weights(self) -> torch.dtype:
        """The dtype of the whole model, or with bfloat16-vision / quantize of the vision encoder alone."""
        return torch.bfloat16 if self.dtype == BF16_VISION else DTYPES[self.dtype]

    @property
    def mixed(self) -> bool:
        """True where the decoder stays float32 beside a vision encoder in `weights` (bfloat16-vision, int8)."""
        return self.dtype == BF16_VISION or self.quantize is not None

    def settings(self) -> dict:
        """What results record of it: {"dtype": ...} and, when quantised, {"quantize": ...}."""
        return {"dtype": self.dtype, **({"quantize": self.quantize} if self.quantize else {})}


def precision(device=None, dtype=None, quantize=None) -> Precision:
    """The one place (device, dtype, quantize) become a Precision; ValueError naming the choices for a bad one.
    "auto" is no setting of its own: it means bfloat16 on one machine and float32 on another, so it is
    resolved here, and results record what it meant."""
    quantizing.check_mode(quantize)
    dev = resolve_device("cpu" if quantize and device in (None, "auto") else device)  # int8 runs on the CPU
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype in (None, "float32"):
        dtype = "float32"
    elif dtype == "auto":
        dtype = "bfloat16" if fast_bf16(dev) else "float32"
    elif dtype not in (*DTYPES, BF16_VISION):
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, {BF16_VISION!r} or 'auto', got {dtype!r}")
    return Precision(dev, dtype, quantize)
