"""A git_scratch checkpoint directory, config.json + model.safetensors: `load` it, `save` one."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import fast, quantize as quantizing
from .config import GitConfig
from .constants import BF16_VISION, LATEST
from .model import GIT
from .precision import Precision, precision


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


def load(path, device=None, dtype=None, quantize=None, fast_paths: bool = True) -> GIT:
    """The model a name names (sources.resolve: a checkpoint folder, a training run or its `latest` file, a
    Hugging Face GIT folder or hub id converted once into the cache, or "demo"), in eval mode, computing as
    `precision(device, dtype, quantize)` says (precision.py: the choices), with the speed tricks of fast.py unless
    `fast_paths` is False (the plain model, as an export traces it).
    """
    from .sources import is_export, resolve  # sources sits above the model files: it may convert

    p = precision(device, dtype, quantize)  # a bad choice fails before any reading
    path = resolve(path)  # a git_scratch checkpoint (config.json + model.safetensors) or an export-onnx folder
    if is_export(path):
        raise ValueError(f"{path}: an export-onnx folder, which runs on onnxruntime: open it with "
                         "git_scratch.export.runtime.OnnxGIT, not load")
    cfg_path, weights = path / "config.json", path / "model.safetensors"
    cfg = GitConfig.from_json(cfg_path)
    try:
        state = load_file(weights, device=str(p.device) if p.device.type != "mps" else "cpu")
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
    model.source = path  # the checkpoint folder: GIT.generate(images) reads its processor from there
    return to_precision(model, p, fast_paths)


def to_precision(model: GIT, p: Precision, fast_paths: bool = True) -> GIT:
    """The plain `model`, in eval mode, converted to what `p` names: device and dtype; the vision encoder one
    image a call (bfloat16-vision, fast.one_image_a_call: a batch never changes an image's features); the
    decoder's Linears in int8 (quantize.py); and, with `fast_paths`, fast.py's tricks."""
    model = model.to(device=p.device, dtype=torch.float32 if p.mixed else p.weights).eval()
    if fast_paths:
        fast.apply(model)
    if p.mixed:  # the decoder stays float32 (around int8 products with quantize); `weights` is the vision encoder's
        model.vision.to(p.weights)
    if p.dtype == BF16_VISION:
        fast.one_image_a_call(model.vision)
    return quantizing.quantize(model, p.quantize)


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
