"""Int8 decoding on the CPU, opt-in: `quantize(model, "int8")`, which `load(..., quantize="int8")` calls.

A greedy caption on the CPU is one vision pass, then one read of every decoder and LM-head weight per new
token; in float32 that read is the floor. Int8 weights read a quarter of the bytes.

What is quantised: the Linear layers of the decoder blocks (attn q/k/v/out_proj, mlp fc1/fc2) and the LM head,
each to int8 weights with one scale per output channel (symmetric, scale = max |w| / 127 of that row).
Activations are quantised per call (dynamic, 7- or 8-bit unsigned with a zero point (NB below), one scale per call
over all its rows, as fbgemm takes them), the product summed in int32 and scaled back to float32, plus the float32
bias. What stays float32: the image projection, the embeddings (a tied LM head quantises its own copy, so the
word lookup keeps the float table), the LayerNorms, attention itself and the KV cache; the vision encoder too,
unless load's `dtype` says bfloat16 (or "auto" on a CPU fast at it).

How: fbgemm's dynamic int8 Linear (torch's `quantized::linear_dynamic` over weights prepacked once by
`quantized::linear_prepack`), the kernel `torch.ao.quantization.quantize_dynamic` uses, here with
per-channel weights and without that deprecated wrapper. Why this one: the git-base LM head (30,522 x 768),
`python -m bench.quantize --parts kernels`, 2-core AMD EPYC (family 25 model 1: Zen 3, AVX2, no AVX-512 or
VNNI), torch 2.13, median ms at 1 row / 4 rows:
    float32 (MKL)                                        7.1 / 17.4
    bfloat16 weights                                     2.8 / 9.9
    fbgemm dynamic int8, per-channel weights (this)      1.1 / 0.9
    torchao 0.18 Int8DynamicActivationInt8Weight         9.5 / 32.6  (eager: torch._int_mm; compiled no faster)
    torchao 0.18 Int8WeightOnly                         48  / 58     (converts the whole weight every call)
    aten._weight_int8pack_mm (weight-only)              12.7 / 45.6
    oneDNN qlinear, uint8 activations (by hand)          2-3 / 5     and wrong: int16 sums saturate without VNNI
A whole git-base decode step: float32 23.5 ms, int8 7.9 ms, bfloat16 12.5 ms; greedy caption 0.57x and beam 4
0.20x transformers float32 in int8 (0.94x / 0.49x in float32). Agreement (`python -m bench.quantize`): the demo
model's 1,000 fresh images give the same captions as float32 and 99.7% of the same answers, accuracy within 0.1
point; bench/RESULTS.md has every figure.
NB: the 7-bit activation range (reduce_range) keeps fbgemm's AVX2 kernel from saturating its int16 sums: with 8
bits the LM head's error was 10x larger (0.35 against 0.034 on unit-scale inputs). On AVX512-VNNI CPUs fbgemm
sums u8 x s8 products straight into int32, so 8 bits are used there (`reduce_range` asks the kernel). On a
2-core AMX Xeon that gave the LM head an error of 0.027 against 0.040 at the same speed; random git-base kept
float32's top-1 under teacher forcing at 97.1% of steps against 82.9%; the demo model's answers were 99.84% the
same as float32's against 99.67% (bench/RESULTS.md).
NB: torch marks quantized tensors deprecated (fbgemm's prepack still takes only them); where a torch lacks the
kernels, `available()` is False and quantize says so.

NB: one activation scale per call means a row's logits depend slightly on the other rows it is decoded with
(beams, a batch of images, the image's tokens in its prefill): int8 ids are reproducible for a given batch, not
across batchings.
"""

from __future__ import annotations

import functools
import itertools
import warnings
import weakref

import torch
from torch import nn

from .constants import QUANTIZE_MODES

MODES = QUANTIZE_MODES

_PACKED: dict[int, tuple[object, int]] = {}  # Int8Linear.key -> (fbgemm's packed weights, out_features)
_KEYS = itertools.count()


# One opaque op for torch.compile (generate(compile=True)), which cannot trace fbgemm's packed weights; eager calls
# skip it. Defined through torch.library's low-level registration, not `torch.library.custom_op`, whose Python
# wrappers cost ~25-60 us a call (measured: 37 calls a step made a compiled git-base step 7.0 ms instead of 6.0).
_LIB = torch.library.Library("git_scratch", "DEF")
_LIB.define("int8_linear(Tensor x, int key) -> Tensor")


def int8_linear(x: torch.Tensor, key: int) -> torch.Tensor:
    """x (.., in) float32 -> (.., out) float32 through the packed weights of Int8Linear `key`."""
    return torch.ops.quantized.linear_dynamic(x, _PACKED[key][0], reduce_range())


_LIB.impl("int8_linear", int8_linear, "CPU")


@torch.library.register_fake("git_scratch::int8_linear")
def _(x: torch.Tensor, key: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], _PACKED[key][1])


@functools.cache
def reduce_range() -> bool:
    """True where fbgemm's kernel would saturate with 8-bit activations, so they get 7 (the NB above): its AVX2
    kernel sums pairs of u8 x s8 products in int16, its AVX512-VNNI one in int32. Asked of the kernel itself, once,
    with what overflows an int16 pair: every activation and weight at the top of its range (64 products of 1 x 1:
    exactly 64 unsaturated, about half that saturated)."""
    w = torch.ones(8, 64)
    with warnings.catch_warnings():  # quantized tensors are deprecated, but fbgemm's prepack takes only them
        warnings.simplefilter("ignore")
        qw = torch.quantize_per_channel(w, torch.full((8,), 1 / 127, dtype=torch.double),
                                        torch.zeros(8, dtype=torch.long), 0, torch.qint8)
    y = torch.ops.quantized.linear_dynamic(torch.ones(1, 64), torch.ops.quantized.linear_prepack(qw, None), False)
    return not torch.allclose(y, torch.full_like(y, 64.0), rtol=0.01)


def check_mode(mode) -> None:
    if mode is not None and mode not in MODES:
        raise ValueError(f"quantize must be one of {', '.join(map(repr, MODES))} or None, got {mode!r}")


def available() -> bool:
    """True where torch has fbgemm's int8 kernels (x86 builds of torch)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")


class Int8Linear(nn.Module):
    """A Linear's inference as fbgemm's dynamic int8 product: int8 weights, one scale per output channel.

    The packed weights are fbgemm's own layout, not parameters: this module has no state dict (a quantised model
    is not saved; its float checkpoint is the source). `weight` is an empty float tensor that only says the
    dtype and device the layer computes in, for `GIT.dtype` / `GIT.device` (which read `lm_head.weight`).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float().cpu()  # (out, in)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,): symmetric, per output channel
        with warnings.catch_warnings():  # quantized tensors are deprecated, but fbgemm's prepack takes only them
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(w, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0,
                                            torch.qint8)
        # a copy: fbgemm keeps the bias tensor, which would otherwise hold the checkpoint's memory map (own_memory)
        bias = None if linear.bias is None else linear.bias.detach().float().cpu().clone()
        self.packed = torch.ops.quantized.linear_prepack(qw, bias)
        self.register_buffer("weight", torch.empty(0, dtype=linear.weight.dtype), persistent=False)
        self._register()

    def _register(self) -> None:
        """A key of its own in _PACKED, for the compiled path; dropped with the module."""
        self.key = next(_KEYS)
        _PACKED[self.key] = (self.packed, self.out_features)
        weakref.finalize(self, _PACKED.pop, self.key, None)

    def __setstate__(self, state) -> None:  # copy.deepcopy: the copy's packed weights get their own key
        super().__setstate__(state)
        self._register()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError("an int8-quantised layer runs on the CPU only")
        x32 = x.float().contiguous()
        if torch.compiler.is_compiling():
            y = torch.ops.git_scratch.int8_linear(x32, self.key)
        else:
            y = torch.ops.quantized.linear_dynamic(x32, self.packed, reduce_range())
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 weights (out, in), per-channel scales (out,)), unpacked from fbgemm's layout (a copy)."""
        qw, _ = torch.ops.quantized.linear_unpack(self.packed)
        return qw.int_repr(), qw.q_per_channel_scales().float()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        raise RuntimeError("an int8-quantised model has no state dict to save: save or export the float32 model "
                           "(load without quantize)")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel, fbgemm"


def quantize(model: nn.Module, mode: str | None) -> nn.Module:
    """The decoder blocks' Linears and the LM head to int8 (mode "int8"), in place; None changes nothing.

    CPU only (fbgemm). The model must be in float32 or bfloat16 on the CPU; an Int8Linear takes and returns the
    dtype it is given (converting to float32 around the int8 product).
    """
    check_mode(mode)
    if mode is None:
        return model
    if model.device.type != "cpu":
        raise ValueError(f"quantize={mode!r} runs on the CPU only (fbgemm), not on {model.device.type}")
    if not available():
        raise ValueError(f"quantize={mode!r} needs torch's fbgemm int8 kernels, which this torch build "
                          f"({torch.__version__}, engines {torch.backends.quantized.supported_engines}) lacks")
    for block in model.blocks:
        for owner in (getattr(block, "attn", None), getattr(block, "mlp", None)):
            for name, child in list(owner.named_children()) if owner is not None else []:
                if isinstance(child, nn.Linear):
                    setattr(owner, name, Int8Linear(child))
    model.lm_head = Int8Linear(model.lm_head)  # a tied head: tok_embed keeps the float table it shared
    left = [f"blocks.{name}" for name, m in model.blocks.named_modules() if isinstance(m, nn.Linear)]
    if left:  # a block of another kind (cross-attention, a gated MLP): its other Linears are not known here
        warnings.warn(f"quantize int8 leaves {len(left)} decoder Linear(s) it does not know in float32: "
                      f"{', '.join(left[:6])}{', ...' if len(left) > 6 else ''}", stacklevel=2)
    own_memory(model)
    return model


@torch.no_grad()
def own_memory(model: nn.Module) -> None:
    """Copy the float tensors that stay (vision, embeddings, norms) into memory of their own. Why: `load` reads
    the checkpoint through a memory map, which lives as long as any tensor from it does, and keeps resident every
    page read: the float decoder weights read once while quantising would stay in the process (measured: git-base
    int8 at 1021 MiB after a caption, float32 922). A copy lets the map go."""
    copies: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for name, t in tensors.items():
                if t is not None and t.device.type == "cpu":
                    if id(t) not in copies:  # shared tensors (a tied table) stay shared
                        copy = t.clone()
                        copies[id(t)] = nn.Parameter(copy, t.requires_grad) if isinstance(t, nn.Parameter) else copy
                    tensors[name] = copies[id(t)]
