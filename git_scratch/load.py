"""A git_scratch checkpoint directory, config.json + model.safetensors: `load` it, `save` one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import fast, quantize as quantizing
from .config import GitConfig
from .constants import BF16_VISION, DTYPE_NAMES, LATEST
from .model import GIT

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}  # "float32" -> torch.float32, ...


def fast_bf16(device: torch.device) -> bool:
    """True where bfloat16 matmuls beat float32: CUDA with bf16 support, or a CPU with AMX/AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(fast.cpu_flags() & {"amx_bf16", "avx512_bf16"})
    return False


def resolve_device(device) -> torch.device:
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """None -> float32 (the parity-tested path); "auto" -> bfloat16 only where it is fast; "bfloat16-vision" ->
    bfloat16 (the vision encoder's: load)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    if dtype == BF16_VISION:
        return torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, {BF16_VISION!r} or 'auto', got {dtype!r}")
    return DTYPES[dtype]


def run_device(device, quantize=None) -> torch.device:
    """The device `load(..., device, quantize=quantize)` puts the model on: int8 runs on the CPU only."""
    return resolve_device("cpu" if quantize and device in (None, "auto") else device)


def dtype_name(dtype, device=None, quantize=None) -> str:
    """The dtype `load(path, device, dtype, quantize)` computes in, by name ("bfloat16"): what results record.
    "auto" is no setting of its own: it means bfloat16 on one machine and float32 on another."""
    if dtype == BF16_VISION:
        return BF16_VISION
    return str(resolve_dtype(dtype, run_device(device, quantize))).removeprefix("torch.")


def checkpoint_dir(path) -> Path:
    """The checkpoint directory `path` names: itself, or, for a training run's `latest` file or the run
    directory that holds one, the step-NNNNNN checkpoint that file names. So `-c runs/x/latest` and
    `-c runs/x` load the run's last complete checkpoint. ValueError where `latest` names no directory."""
    path = Path(path)
    if path.name == LATEST and path.is_file():
        pointer = path
    elif path.is_dir() and not (path / "config.json").exists() and (path / LATEST).is_file():
        pointer = path / LATEST
    else:
        return path  # a checkpoint directory, or nothing that resolves (the loaders say what is missing)
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{pointer}: cannot read the run's latest checkpoint name ({e})") from None
    target = pointer.parent / name
    if not name or "/" in name or not target.is_dir():
        raise ValueError(f"{pointer} names {name!r}, which is not a checkpoint directory beside it")
    return target


def load(path, device=None, dtype=None, quantize=None) -> GIT:
    """The model of a converted checkpoint directory, in eval mode, with the speed tricks of fast.py.

    device: "cpu", "cuda", "mps", "auto" or None (= auto). dtype: torch dtype, "float32", "bfloat16",
    "float16", "auto" (bfloat16 where the hardware is fast at it), None (= float32) or "bfloat16-vision": the
    vision encoder in bfloat16, one image a call (fast.one_image_a_call, so that a batch never changes an image's
    features), the decoder in float32 (on a CPU, bfloat16 pays in the vision pass; a decode step is no faster).
    quantize: None (the weights as stored) or "int8": the decoder blocks' Linears and the LM head in int8, CPU
    only (quantize.py; device None/"auto" then means the CPU), the rest of the decoder in float32, and `dtype`
    then says the vision encoder's alone (so "auto" gives a bfloat16 vision pass beside the int8 decoder where
    bfloat16 is fast). `path` may also be a training run directory or its `latest` file (checkpoint_dir).
    """
    quantizing.check_mode(quantize)  # a bad mode fails before any reading
    path = checkpoint_dir(path)
    cfg_path, weights = path / "config.json", path / "model.safetensors"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path}: no config.json (is this a git_scratch checkpoint directory?)")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    if raw.get("model_type") == "git":
        raise ValueError(
            f"{path} is a Hugging Face checkpoint; convert it first: git-scratch convert {path} CONVERTED_DIR"
        )
    if raw.get("model_type") != "git_scratch":
        raise ValueError(f"{cfg_path}: not a git_scratch checkpoint (model_type {raw.get('model_type')!r})")
    cfg = GitConfig.from_json(cfg_path)
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: no model.safetensors")
    dev = run_device(device, quantize)
    dt = resolve_dtype(dtype, dev)
    try:
        state = load_file(weights, device=str(dev) if dev.type != "mps" else "cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights}: cannot read weights ({e}); truncated or corrupt?") from None
    with torch.device("meta"):  # no memory spent on random init that would be overwritten
        model = GIT(cfg)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{weights}: does not match its config.json: {e}") from None
    if cfg.text.tie_embeddings:
        model.lm_head.weight = model.embed.tok_embed.weight
    if quantize is None and dtype != BF16_VISION:
        return fast.apply(model.to(device=dev, dtype=dt).eval())
    # the decoder stays float32 (around int8 products with quantize: quantize.py); `dt` is the vision encoder's
    model = fast.apply(model.to(device=dev, dtype=torch.float32).eval())
    model.vision.to(dt)
    if dtype == BF16_VISION:
        fast.one_image_a_call(model.vision)
    return model if quantize is None else quantizing.quantize(model, quantize)


def umask_mode(directory: bool = False) -> int:
    """The permissions a plain mkdir (directory) or open gives under the process's umask: 0o755 / 0o644 at 022."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def save(model: GIT, path: str | Path) -> None:
    """Write `config.json` + `model.safetensors`, the format `git_scratch.load` reads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.text.tie_embeddings:
        state["lm_head.weight"] = state["lm_head.weight"].clone()  # safetensors refuses shared storage
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    (path / "model.safetensors").chmod(umask_mode())  # safetensors writes 0600; make it an ordinary file
    model.config.save(path / "config.json")
