"""Where a model comes from: `resolve(NAME)` turns any name a user may give into a local folder to load.

    demo                      the shipped shapes model (git_scratch/data/shapes_demo)
    DIR                       a git_scratch checkpoint, a training run or its `latest`, an `export-onnx` folder
    DIR (model_type "git")    a Hugging Face GIT folder: converted once into the cache, keyed by its files' content
    owner/name[@revision]     a Hugging Face hub id: fetched with huggingface_hub, then converted once as above

A path that exists is that path, whatever its shape (`ckpt/x` is the folder, not a hub id; `./demo` a folder
named demo). The cache: cache.py. Every failure is a ValueError of one line saying what the name lacks.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..convert.files import read_json
from ..convert.hub import download, is_hub_id
from ..data.shapes import CHECKPOINT
from ..export import GRAPH_FILES, MANIFEST
from ..export.runtime import is_export
from ..load import checkpoint_dir
from .cache import cache_root, converted

__all__ = ["DEMO", "cache_root", "is_export", "processor_dir", "resolve"]

DEMO = "demo"
KINDS = ("a checkpoint folder, a training run, a Hugging Face GIT folder, an export-onnx folder, a hub id "
         "owner/name[@revision], or demo")


def resolve(name) -> Path:
    """The local folder `name` names: a git_scratch checkpoint folder or an export-onnx folder. ValueError
    (one line) for anything else."""
    text = os.fspath(name)
    if Path(text).exists():
        return folder(Path(text))
    if text == DEMO:
        return CHECKPOINT
    if is_hub_id(text):
        return folder(download(text))  # a snapshot whose config.json names a GIT (hub.check_git)
    raise ValueError(f"{text}: no such checkpoint directory (a model is named as {KINDS})")


def processor_dir(name) -> Path:
    """The folder Processor.from_pretrained reads: resolve(name), except that an existing folder that is not a
    Hugging Face GIT one is taken as it is, weights or not (a processor reads only its text and image files)."""
    path = checkpoint_dir(name)
    if path.is_dir() and model_type(path) != "git":
        return path
    return resolve(name)


def model_type(path: Path) -> str | None:
    """config.json's model_type; None where there is no readable config.json."""
    try:
        return read_json(path / "config.json").get("model_type")
    except (OSError, ValueError):
        return None


def folder(path: Path) -> Path:
    """An existing path: the checkpoint or export it is, the checkpoint a run names, or a Hugging Face GIT folder
    converted (cache.converted)."""
    path = checkpoint_dir(path)
    if is_export(path):
        return path
    if not path.is_dir():
        raise ValueError(f"{path} is a file; pass the checkpoint directory, the folder that holds config.json and "
                         "model.safetensors")
    if not (path / "config.json").is_file():
        raise ValueError(lacking(path))
    kind = read_json(path / "config.json").get("model_type")
    if kind == "git":
        return converted(path)
    if kind != "git_scratch":
        raise ValueError(f"{path / 'config.json'}: not a git_scratch checkpoint, nor a Hugging Face GIT one "
                         f"(model_type {kind!r})")
    if not (path / "model.safetensors").is_file():
        raise ValueError(f"{path}: no model.safetensors")
    return path


def lacking(path: Path) -> str:
    """What a folder without config.json lacks, said for the kind it looks like."""
    if any((path / name).is_file() for name in GRAPH_FILES):
        return f"{path}: ONNX graphs without {MANIFEST}, so not a folder export-onnx wrote whole"
    if path.name.startswith("models--") and (path / "snapshots").is_dir():
        hub_id = path.name.removeprefix("models--").replace("--", "/", 1)
        return f"{path}: a Hugging Face hub cache folder; name the model by its hub id, {hub_id}"
    return (f"{path}: no config.json (is this a git_scratch checkpoint directory?), no {MANIFEST} (an export-onnx "
            "folder), no `latest` (a training run)")
