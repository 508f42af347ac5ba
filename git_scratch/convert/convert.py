"""Hugging Face GIT checkpoint <-> git_scratch checkpoint, and the original GIT's model.pt -> git_scratch.

One function per direction; `convert` picks one, and every direction ends in the same tail, `write_converted`:

    hf_to_ours_dir        a Hugging Face directory    -> ours          mapping.NAME_MAP
    original_to_ours_dir  the original GIT's model.pt -> ours          original.ORIGINAL_NAME_MAP, then its SPLITS
    ours_to_hf_dir        ours (--to-hf)              -> Hugging Face  mapping.NAME_MAP read backwards

read (files.py) -> rename (rename.py) -> completeness and shape checks -> dtype -> tokenizer check -> write
atomically, with the tokenizer and preprocessing files. The source is only ever read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from git_scratch.config import GitConfig
from git_scratch.constants import PREPROCESSOR_FILES
from git_scratch.precision import DTYPES
from git_scratch.model import GIT
from git_scratch.vision import VisionEncoder
from git_scratch.preprocessing.processor import no_preprocessing_settings

from .files import (cast, check_tokenizer, read_config, read_json, read_original, read_tensors, read_weights,
                    write_checkpoint)
from .hf_config import config_from_hf, config_to_hf
from .hub import download, is_hub_id
from .mapping import DROPPED, HF_LEGACY, NAME_MAP
from .original import ORIGINAL_DROPPED, ORIGINAL_EMBED_LN_EPS, ORIGINAL_NAME_MAP, SPLITS, WRAPPER_PREFIX
from .rename import ConversionError, check_complete, inverse, listing, lookup, rename, split_packed, strip_wrappers


# ---------------------------------------------------------------- state dicts
def expected_shapes(cfg: GitConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = GIT(cfg)
    return {k: v.shape for k, v in model.state_dict(keep_vars=True).items()}


# The modules a transformers GIT is made of, each with every parameter it has there (its LayerNorms and
# Linears all have biases); the modules the table names parameters of directly (the class token, positions,
# temporal embeddings). A parameter held by any other module has no transformers key of the same meaning,
# whatever its name and shape: an RMSNorm's weight would load as a LayerNorm's.
HF_MODULES = {nn.Linear: ("weight", "bias"), nn.LayerNorm: ("weight", "bias"), nn.Embedding: ("weight",),
              nn.Conv2d: ("weight",)}
HF_OWNERS = (VisionEncoder, nn.ParameterList)


def unknown_to_hf(cfg: GitConfig) -> list[str]:
    """The parameters of GIT(cfg), as the model files build it now, that have no transformers counterpart of
    the same meaning: each named with the module class that holds it."""
    with torch.device("meta"):
        model = GIT(cfg)
    unknown = []
    for name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if not own or type(module) in HF_OWNERS or tuple(own) == HF_MODULES.get(type(module)):
            continue
        unknown += [f"{name}.{n} (of a {type(module).__name__}{' without a bias' * (own == ['weight'])})"
                    for n in own]
    return unknown


def hf_name(key: str) -> str:
    """Our parameter name -> "Hugging Face NAME", the table read backwards."""
    name = lookup(key, inverse(NAME_MAP))
    return f"Hugging Face {name}" if name else "no Hugging Face name"


def hf_to_ours(hf_state: dict[str, torch.Tensor], cfg: GitConfig) -> dict[str, torch.Tensor]:
    names = rename(hf_state, {**NAME_MAP, **HF_LEGACY}, DROPPED)
    ours = {names[k]: v for k, v in hf_state.items() if k in names}
    if cfg.text.tie_embeddings and "lm_head.weight" not in ours and "embed.tok_embed.weight" in ours:
        ours["lm_head.weight"] = ours["embed.tok_embed.weight"]  # tied checkpoints may omit the copy
    check_complete(ours, expected_shapes(cfg), "git_scratch", source_name=hf_name)
    return ours


def ours_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = rename(state, inverse(NAME_MAP))
    return {names[k]: v for k, v in state.items()}


def original_name(key: str) -> str:
    """Our parameter name -> "original NAME": the split table, then the name table, read backwards."""
    if key == "lm_head.weight":
        return "tied to original textual.embedding.words.weight"
    packed = lookup(key, {part: src for src, parts in SPLITS.items() for part in parts}) or key
    name = lookup(packed, inverse(ORIGINAL_NAME_MAP))
    return f"original {name}" if name else "no original name"


def original_to_ours(state: dict[str, torch.Tensor], cfg: GitConfig) -> dict[str, torch.Tensor]:
    """An original state dict (`module.` prefixes stripped) -> ours: rename, split q/k/v, tie the head, check."""
    names = rename(state, ORIGINAL_NAME_MAP, ORIGINAL_DROPPED)
    ours = split_packed({names[k]: v for k, v in state.items() if k in names}, SPLITS)
    if "embed.tok_embed.weight" in ours:  # NB: the original's head is the word embedding (cfg ties them too)
        ours["lm_head.weight"] = ours["embed.tok_embed.weight"]
    check_complete(ours, expected_shapes(cfg), "git_scratch", source_name=original_name)
    return ours


def head_copy_differs(state: dict[str, torch.Tensor]) -> str | None:
    """A warning when the file's own head weight is not the word embedding, which the original uses instead."""
    head, words = state.get("textual.output.weight"), state.get("textual.embedding.words.weight")
    if head is None or words is None or (head.shape == words.shape and torch.equal(head, words)):
        return None
    return ("textual.output.weight differs from textual.embedding.words.weight; the head uses the word embedding, "
            "as the original's loader does (it never reads textual.output.weight)")


def original_config(config=None, preset: str | None = None) -> GitConfig:
    """The shape of an original checkpoint: a Hugging Face GIT config.json (or ours), or a preset by name.
    The LM head is tied whatever the file says, and the text embeddings' LayerNorm takes eps 1e-8: the original
    always builds them so (layers/decoder.py:61)."""
    if preset is not None:
        try:
            cfg = GitConfig.preset(preset)
        except ValueError as e:
            raise ConversionError(str(e)) from None
    else:
        path = Path(config)
        if not path.is_file():
            raise ConversionError(f"{path}: no such config file (--config takes a Hugging Face GIT config.json)")
        d = read_json(path)
        try:
            cfg = GitConfig.from_dict(d) if d.get("model_type") == "git_scratch" else config_from_hf(d)
        except (ValueError, TypeError) as e:
            raise ConversionError(f"{path}: {e}") from None
    cfg.text.tie_embeddings = True
    cfg.text.embed_ln_eps = ORIGINAL_EMBED_LN_EPS
    return cfg


# ---------------------------------------------------------------- checkpoints, one function per direction
@dataclass
class Converted:
    """What a direction hands the shared tail: the weights and config.json to write, under the target's names."""
    state: dict[str, torch.Tensor]  # cast to the asked dtype
    config_json: dict
    cfg: GitConfig  # the shape: its special ids are checked against the tokenizer's
    files: Path | None  # the directory whose tokenizer and preprocessing files come along; None: none do
    dropped: list[str]  # source keys left out on purpose
    warnings: list[str] = field(default_factory=list)
    original: bool = False


def hf_to_ours_dir(src: Path, dtype: torch.dtype | None, trust_pickle: bool) -> Converted:
    """A Hugging Face checkpoint directory: config.json and weights (safetensors or pickled, maybe sharded)."""
    hf_cfg = read_config(src)
    if hf_cfg.get("model_type") == "git_scratch":
        raise ConversionError(f"{src} is already a git_scratch checkpoint; to convert it back to Hugging Face "
                              "format, pass --to-hf")
    try:
        cfg = config_from_hf(hf_cfg)
    except (ValueError, TypeError) as e:
        raise ConversionError(f"{src / 'config.json'}: {e}") from None
    source = read_weights(src, trust_pickle)
    return Converted(cast(hf_to_ours(source, cfg), dtype), cfg.to_dict(), cfg, files=src,
                     dropped=sorted(set(source) & set(DROPPED)))


def original_to_ours_dir(src: Path, config, preset: str | None, dtype: torch.dtype | None,
                         trust_pickle: bool) -> Converted:
    """The original's model.pt, its shape from `config` (whose directory's tokenizer files come along) or `preset`."""
    cfg = original_config(config, preset)
    source = strip_wrappers(read_original(src, trust_pickle), WRAPPER_PREFIX)
    return Converted(cast(original_to_ours(source, cfg), dtype), cfg.to_dict(), cfg,
                     files=Path(config).parent if config is not None else None,
                     dropped=sorted(set(source) & set(ORIGINAL_DROPPED)),
                     warnings=[w for w in [head_copy_differs(source)] if w], original=True)


def ours_to_hf_dir(src: Path, dtype: torch.dtype | None) -> Converted:
    """Ours -> Hugging Face, loadable with transformers.GitForCausalLM.from_pretrained. Reads only model.safetensors,
    which git_scratch always writes."""
    ours_cfg = read_config(src)
    try:
        cfg = GitConfig.from_dict(ours_cfg)
    except (ValueError, TypeError) as e:
        raise ConversionError(f"{src / 'config.json'}: not a git_scratch checkpoint config ({e})") from None
    try:
        hf_cfg = config_to_hf(cfg)  # refuses what transformers has no form for (text.norm "pre")
    except ValueError as e:
        raise ConversionError(f"{src}: {e}") from None
    if not (src / "model.safetensors").is_file():
        raise ConversionError(f"{src}: no model.safetensors")
    if unknown := unknown_to_hf(cfg):
        raise ConversionError(f"{src}: {len(unknown)} parameter(s) have no transformers key of the same meaning "
                              f"(transformers' GIT has LayerNorms and Linears with biases there): {listing(unknown)}")
    source = read_tensors(src / "model.safetensors")
    check_complete(source, expected_shapes(cfg), "git_scratch")
    state = ours_to_hf(cast(source, dtype))
    if cfg.text.tie_embeddings:
        state.pop("output.weight")  # transformers re-ties it on load
    hf_cfg["dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    warnings = []
    if cfg.text.embed_ln_eps not in (None, cfg.text.ln_eps):  # e.g. an original checkpoint's 1e-8
        warnings.append(f"text.embed_ln_eps {cfg.text.embed_ln_eps:g} has no Hugging Face form: transformers' "
                        f"text embeddings use layer_norm_eps {cfg.text.ln_eps:g}, as its own conversion of the "
                        "original checkpoints does (the outputs move slightly)")
    return Converted(state, hf_cfg, cfg, files=src, dropped=[], warnings=warnings)


# ---------------------------------------------------------------- the shared tail, and the entry
def write_converted(c: Converted, src: Path, dst: Path, overwrite: bool) -> dict:
    """Check the tokenizer before anything is written, write dst, and sum up for the command line."""
    mismatch = check_tokenizer(c.files, c.cfg) if c.files else None
    copied = write_checkpoint(dst, c.state, c.config_json, c.files, overwrite)
    warnings = c.warnings + ([mismatch] if mismatch else [])
    if not any(name in copied for name in PREPROCESSOR_FILES):
        warnings.append(no_preprocessing_settings(c.files or src))
    return {"tensors": len(c.state), "dropped": c.dropped, "copied": copied, "warnings": warnings,
            "original": c.original}


def check_source(src: Path, original: bool, to_hf: bool, config, preset: str | None) -> None:
    """The source fits the direction its arguments ask for: a directory, or a model.pt with one shape given."""
    if not original:
        if not src.is_dir():
            raise ConversionError(f"{src}: not a directory")
        return
    if config is not None and preset is not None:
        raise ConversionError("pass --config or --preset, not both")
    if to_hf:
        raise ConversionError("--to-hf converts a git_scratch checkpoint directory, not an original model.pt")
    if src.is_dir():
        raise ConversionError(f"{src} is a directory: --config and --preset are for the original GIT's model.pt "
                              "file (a Hugging Face checkpoint directory carries its own config.json)")
    if not src.is_file():
        raise ConversionError(f"{src}: no such file")
    if config is None and preset is None:
        raise ConversionError(f"{src} is a file, read as the original GIT's model.pt: give its shape with "
                              "--config CONFIG.json (a Hugging Face GIT config.json) or --preset NAME")


def convert(src, dst, dtype: str | None = None, to_hf: bool = False, overwrite: bool = False,
            trust_pickle: bool = False, config=None, preset: str | None = None) -> dict:
    """Convert one checkpoint. Returns a summary (counts, what was dropped, files copied, warnings).

    src: a Hugging Face checkpoint directory (a git_scratch one with to_hf), or, where no such path exists, a
    Hugging Face hub id owner/name[@revision] (fetched by hub.py into huggingface_hub's cache), or the original
    GIT's model.pt with its shape from `config` (a Hugging Face GIT config.json, whose directory's tokenizer and
    preprocessing files are copied too) or `preset` (a name, e.g. "git-base-coco").
    trust_pickle: read a .bin/.pt file that holds pickled Python objects besides tensors
    (unpickling can run any code: only for files from a trusted source).
    """
    src, dst = Path(src), Path(dst)
    original = src.is_file() or config is not None or preset is not None
    if not original and not src.exists() and is_hub_id(str(src)):
        src = download(str(src))
    check_source(src, original, to_hf, config, preset)
    if src.resolve() == dst.resolve():
        raise ConversionError("source and destination are the same directory; the source is never modified")
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype] if dtype is not None else None
    if original:
        converted = original_to_ours_dir(src, config, preset, torch_dtype, trust_pickle)
    elif to_hf:
        converted = ours_to_hf_dir(src, torch_dtype)
    else:
        converted = hf_to_ours_dir(src, torch_dtype, trust_pickle)
    return write_converted(converted, src, dst, overwrite)
