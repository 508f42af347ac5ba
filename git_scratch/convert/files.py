"""The converter's files: reading checkpoints (safetensors, shards, pickles, the original's model.pt, config.json,
the tokenizer) and writing a checkpoint directory atomically. Each failure is one ConversionError naming the file.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from git_scratch.config import GitConfig
from git_scratch.constants import PREPROCESSOR_FILES, TOKENIZER_FILES
from git_scratch.load import umask_mode
from git_scratch.preprocessing.tokenizer import Tokenizer, special_ids_disagree

from .rename import ConversionError, listing

HF_INPUT_NAMES = ["input_ids", "attention_mask"]  # what GitForCausalLM.forward takes of a tokenizer's outputs


# ---------------------------------------------------------------- reading
def read_json(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConversionError(f"{path}: not a checkpoint config (a JSON {type(cfg).__name__}, not an object)")
    return cfg


def read_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise ConversionError(f"{src}: no config.json (is this a checkpoint directory?)")
    return read_json(path)


SAFE_WAYS = ("convert a safetensors copy of the checkpoint instead (model.safetensors), or, only for a file "
             "from a source you trust, pass --trust-pickle")


def read_tensors(path: Path, trust_pickle: bool = False, advice: str = SAFE_WAYS) -> dict[str, torch.Tensor]:
    """One weights file: safetensors, or a pickle that may hold only tensors and plain containers unless trusted."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        # weights_only=True unpickles tensors and plain containers only; anything else could run code.
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        # NB: torch's own message advises weights_only=False, which runs whatever the file holds.
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it names the Python object {named.group(1)}" if named else "pickled Python objects"
        raise ConversionError(
            f"{path}: holds more than tensors ({what}), and unpickling it could run any code it carries; {advice}"
        ) from None
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ConversionError(f"{path}: cannot read weights ({type(e).__name__}: {e}); truncated or corrupt?") from None
    except Exception as e:  # a file trusted with --trust-pickle may raise anything
        raise ConversionError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None


def read_weights(src: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """model.safetensors, sharded safetensors with an index, or pytorch_model.bin (also sharded)."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (src / single).is_file():
            return read_tensors(src / single, trust_pickle)
        if (src / index).is_file():
            try:
                shards = sorted(set(json.loads((src / index).read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as e:
                raise ConversionError(f"{src / index}: not a valid shard index ({e})") from None
            state = {}
            for shard in shards:
                if not (src / shard).is_file():
                    raise ConversionError(f"{src / index} names shard {shard}, which is missing")
                state.update(read_tensors(src / shard, trust_pickle))
            return state
    raise ConversionError(
        f"{src}: no weights found (looked for model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin, pytorch_model.bin.index.json)"
    )


def read_original(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """An original checkpoint file: {"model": state_dict}, or a bare state dict (keys as saved, `module.` and all)."""
    loaded = read_tensors(path, trust_pickle, advice="only for a file from a source you trust, pass --trust-pickle")
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else loaded
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = f"a dict with keys {listing(map(str, loaded))}" if isinstance(loaded, dict) else type(loaded).__name__
        raise ConversionError(f"{path}: not an original GIT checkpoint (expected {{'model': state_dict}}, "
                              f"found {found})")
    return state


def check_tokenizer(src: Path, cfg: GitConfig) -> str | None:
    """A warning when the tokenizer's special ids are not the config's; ConversionError when it cannot be read."""
    if not any((src / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        return None
    try:
        tok = Tokenizer.from_pretrained(src)
    except (ValueError, OSError) as e:
        why = " ".join(str(e).split())
        raise ConversionError(f"{why}; the converted checkpoint could not turn ids into text") from None
    return special_ids_disagree(tok, cfg.text.bos_id, cfg.text.eos_id, cfg.text.pad_id, src)


# ---------------------------------------------------------------- writing
def cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    # contiguous copies: safetensors refuses views and shared storage (tied weights)
    return {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().clone()
        for k, v in state.items()
    }


def _write_atomically(dst: Path, fill, overwrite: bool) -> None:
    """Build the checkpoint in a temporary sibling directory, then move it into place in one rename."""
    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"{dst} exists and is not a directory")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ConversionError(f"{dst} already exists and is not empty (pass --overwrite to replace it)")
    blocker = next((p for p in dst.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConversionError(f"cannot write {dst}: {blocker} is a file, not a directory")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        fill(tmp)
        # the permissions of `git-scratch init`'s checkpoints, not mkdtemp's 0700 and safetensors' 0600
        tmp.chmod(umask_mode(directory=True))
        for f in tmp.iterdir():
            f.chmod(umask_mode())
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dst.rename(old)
            tmp.rename(dst)
            shutil.rmtree(old)
        else:
            tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def hf_tokenizer_config(files: Path | None) -> dict:
    """`files`' tokenizer_config.json (or none) naming the inputs transformers' GitForCausalLM takes. Why: BERT's
    tokenizer also makes token_type_ids by default, which GIT's generate refuses, so transformers' pipelines fail."""
    path = files / "tokenizer_config.json" if files is not None else None
    return {**(read_json(path) if path is not None and path.is_file() else {}), "model_input_names": HF_INPUT_NAMES}


def write_checkpoint(dst: Path, state: dict[str, torch.Tensor], config: dict, files: Path | None,
                     overwrite: bool) -> list[str]:
    """dst written atomically: model.safetensors, config.json, and the tokenizer and preprocessing files found in
    `files`; a Hugging Face checkpoint's tokenizer_config.json names its model's inputs (hf_tokenizer_config).
    Returns the names of the files copied."""
    copied: list[str] = []

    def fill(tmp: Path) -> None:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name in TOKENIZER_FILES + PREPROCESSOR_FILES:
            if files is not None and (files / name).is_file():
                shutil.copy2(files / name, tmp / name)
                copied.append(name)
        if config.get("model_type") == "git":  # a Hugging Face checkpoint (--to-hf): transformers reads it
            (tmp / "tokenizer_config.json").write_text(json.dumps(hf_tokenizer_config(files), indent=2) + "\n")

    try:
        _write_atomically(dst, fill, overwrite)
    except OSError as e:  # permissions, a full disk: one line, not a traceback
        raise ConversionError(f"cannot write {dst}: {e.strerror or e}") from None
    return copied
