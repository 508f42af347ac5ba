"""Hugging Face GIT checkpoint <-> git_scratch checkpoint, and the original GIT's model.pt -> git_scratch.

read -> rename (mapping.NAME_MAP; original.ORIGINAL_NAME_MAP, then its SPLITS) -> completeness and shape
checks -> dtype -> write atomically. The source is only ever read.
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
from git_scratch.load import DTYPES, umask_mode
from git_scratch.model import GIT
from git_scratch.preprocessing.processor import no_preprocessing_settings
from git_scratch.preprocessing.tokenizer import Tokenizer, special_ids_disagree

from .hf_config import config_from_hf, config_to_hf
from .mapping import DROPPED, HF_LEGACY, NAME_MAP
from .original import ORIGINAL_DROPPED, ORIGINAL_EMBED_LN_EPS, ORIGINAL_NAME_MAP, SPLITS, WRAPPER_PREFIX


class ConversionError(ValueError):
    pass


def _listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# ---------------------------------------------------------------- renaming
def _compile(table: dict[str, str]):
    """Each row -> (regex, target template). A row matches itself, or itself + .weight / .bias."""
    rows = []
    for src, dst in table.items():
        pattern = re.escape(src).replace(r"\{i\}", r"(?P<i>\d+)")
        rows.append((re.compile(f"^{pattern}(?P<suffix>\\.weight|\\.bias)?$"), dst))
    return rows


def _fill(template: str, m: re.Match) -> str:
    return template.replace("{i}", m.groupdict().get("i") or "") + (m.group("suffix") or "")


def rename(keys, table: dict[str, str], dropped=()) -> dict[str, str]:
    """source key -> target key for every key; errors name every key that matches no row or two."""
    rows = _compile(table)
    out, unmapped, ambiguous = {}, [], []
    for key in keys:
        if key in dropped:
            continue
        hits = [(m, dst) for rx, dst in rows if (m := rx.match(key))]
        if not hits:
            unmapped.append(key)
        elif len(hits) > 1:
            ambiguous.append(key)
        else:
            m, dst = hits[0]
            out[key] = _fill(dst, m)
    if unmapped:
        raise ConversionError(f"{len(unmapped)} source key(s) match no row of the name table: {_listing(unmapped)}")
    if ambiguous:
        raise ConversionError(f"source key(s) match two rows of the name table: {_listing(ambiguous)}")
    targets = list(out.values())
    if len(set(targets)) != len(targets):
        dups = {t for t in targets if targets.count(t) > 1}
        raise ConversionError(f"two source keys land on one target: {_listing(dups)}")
    return out


def check_complete(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], what: str,
                   source_name=None) -> None:
    """Every expected parameter present, nothing extra, every shape equal. Errors name the keys (a missing one
    also by `source_name(key)`, the name it has in the file being converted)."""
    missing = {f"{k} ({source_name(k)})" if source_name else k for k in set(expected) - set(state)}
    extra = set(state) - set(expected)
    wrong = [
        f"{k} {tuple(state[k].shape)} != expected {tuple(expected[k])}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k]
    ]
    errors = []
    if missing:
        errors.append(f"missing {len(missing)} {what} parameter(s): {_listing(missing)}")
    if extra:
        errors.append(f"unexpected {len(extra)} {what} parameter(s): {_listing(extra)}")
    if wrong:
        errors.append(f"wrong shape for {len(wrong)} {what} parameter(s): {'; '.join(wrong[:8])}")
    if errors:
        raise ConversionError("; ".join(errors))


def expected_shapes(cfg: GitConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = GIT(cfg)
    return {k: v.shape for k, v in model.state_dict(keep_vars=True).items()}


def hf_to_ours(hf_state: dict[str, torch.Tensor], cfg: GitConfig) -> dict[str, torch.Tensor]:
    names = rename(hf_state, {**NAME_MAP, **HF_LEGACY}, DROPPED)
    ours = {names[k]: v for k, v in hf_state.items() if k in names}
    if cfg.text.tie_embeddings and "lm_head.weight" not in ours and "embed.tok_embed.weight" in ours:
        ours["lm_head.weight"] = ours["embed.tok_embed.weight"]  # tied checkpoints may omit the copy
    check_complete(ours, expected_shapes(cfg), "git_scratch", source_name=hf_name)
    return ours


def _lookup(key: str, table: dict[str, str]) -> str | None:
    """The name `table` gives `key`, or None."""
    try:
        return rename([key], table)[key]
    except ConversionError:
        return None


def _inverse(table: dict[str, str]) -> dict[str, str]:
    return {dst: src for src, dst in table.items()}


def hf_name(key: str) -> str:
    """Our parameter name -> "Hugging Face NAME", the table read backwards."""
    name = _lookup(key, _inverse(NAME_MAP))
    return f"Hugging Face {name}" if name else "no Hugging Face name"


def ours_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = rename(state, _inverse(NAME_MAP))
    return {names[k]: v for k, v in state.items()}


# ---------------------------------------------------------------- the original GIT's model.pt
def strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every leading `module.` removed, as the original's loader removes them; two keys becoming one is an error."""
    out = {}
    for key, value in state.items():
        name = key
        while name.startswith(WRAPPER_PREFIX):
            name = name[len(WRAPPER_PREFIX):]
        if name in out:
            raise ConversionError(f"two source keys become {name} once '{WRAPPER_PREFIX}' prefixes are stripped")
        out[name] = value
    return out


def split_packed(state: dict[str, torch.Tensor], splits: dict[str, tuple[str, ...]]) -> dict[str, torch.Tensor]:
    """The tensor-transform table applied: each packed tensor becomes its equal row blocks, each under its name."""
    rows = _compile(splits)
    out = {}
    for key, value in state.items():
        hit = next(((m, parts) for rx, parts in rows if (m := rx.match(key))), None)
        if hit is None:
            out[key] = value
            continue
        m, parts = hit
        if value.ndim == 0 or value.shape[0] % len(parts):
            raise ConversionError(f"{key}: shape {tuple(value.shape)} does not split into {len(parts)} equal parts")
        out.update({_fill(part, m): block for part, block in zip(parts, value.chunk(len(parts)))})
    return out


def original_name(key: str) -> str:
    """Our parameter name -> "original NAME": the split table, then the name table, read backwards."""
    if key == "lm_head.weight":
        return "tied to original textual.embedding.words.weight"
    packed = _lookup(key, {part: src for src, parts in SPLITS.items() for part in parts}) or key
    name = _lookup(packed, _inverse(ORIGINAL_NAME_MAP))
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


def read_original(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """An original checkpoint file: {"model": state_dict} (or a bare state dict), `module.` prefixes stripped."""
    loaded = _read_one(path, trust_pickle, advice="only for a file from a source you trust, pass --trust-pickle")
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else loaded
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = f"a dict with keys {_listing(map(str, loaded))}" if isinstance(loaded, dict) else type(loaded).__name__
        raise ConversionError(f"{path}: not an original GIT checkpoint (expected {{'model': state_dict}}, "
                              f"found {found})")
    return strip_wrappers(state)


# ---------------------------------------------------------------- reading
def read_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise ConversionError(f"{src}: no config.json (is this a checkpoint directory?)")
    return read_json(path)


def read_json(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConversionError(f"{path}: not a checkpoint config (a JSON {type(cfg).__name__}, not an object)")
    return cfg


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


SAFE_WAYS = ("convert a safetensors copy of the checkpoint instead (model.safetensors), or, only for a file "
             "from a source you trust, pass --trust-pickle")


def _read_one(path: Path, trust_pickle: bool = False, advice: str = SAFE_WAYS) -> dict[str, torch.Tensor]:
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
    except Exception as e:  # noqa: BLE001 -- a file trusted with --trust-pickle may raise anything
        raise ConversionError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None


def read_weights(src: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """model.safetensors, sharded safetensors with an index, or pytorch_model.bin (also sharded)."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (src / single).is_file():
            return _read_one(src / single, trust_pickle)
        if (src / index).is_file():
            try:
                shards = sorted(set(json.loads((src / index).read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as e:
                raise ConversionError(f"{src / index}: not a valid shard index ({e})") from None
            state = {}
            for shard in shards:
                if not (src / shard).is_file():
                    raise ConversionError(f"{src / index} names shard {shard}, which is missing")
                state.update(_read_one(src / shard, trust_pickle))
            return state
    raise ConversionError(
        f"{src}: no weights found (looked for model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin, pytorch_model.bin.index.json)"
    )


# ---------------------------------------------------------------- writing
def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
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


def _copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES + PREPROCESSOR_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def convert(src, dst, dtype: str | None = None, to_hf: bool = False, overwrite: bool = False,
            trust_pickle: bool = False, config=None, preset: str | None = None) -> dict:
    """Convert one checkpoint. Returns a summary (counts, what was dropped, files copied, warnings).

    src: a Hugging Face checkpoint directory (a git_scratch one with to_hf), or the original GIT's model.pt
    with its shape from `config` (a Hugging Face GIT config.json, whose directory's tokenizer and preprocessing
    files are copied too) or `preset` (a name, e.g. "git-base-coco").
    trust_pickle: read a .bin/.pt file that holds pickled Python objects besides tensors
    (unpickling can run any code: only for files from a trusted source).
    """
    src, dst = Path(src), Path(dst)
    original = src.is_file() or config is not None or preset is not None
    if original:
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
    elif not src.is_dir():
        raise ConversionError(f"{src}: not a directory")
    if src.resolve() == dst.resolve():
        raise ConversionError("source and destination are the same directory; the source is never modified")
    torch_dtype = None
    if dtype is not None:
        if dtype not in DTYPES:
            raise ConversionError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        torch_dtype = DTYPES[dtype]

    warnings, files = [], src  # files: the directory whose tokenizer and preprocessing files come along
    if original:
        cfg = original_config(config, preset)
        files = Path(config).parent if config is not None else None
        source = read_original(src, trust_pickle)
        state = _cast(original_to_ours(source, cfg), torch_dtype)
        warnings += [w for w in [head_copy_differs(source)] if w]
        config_out, dropped = cfg.to_dict(), ORIGINAL_DROPPED
    elif not to_hf:
        hf_cfg = read_config(src)
        if hf_cfg.get("model_type") == "git_scratch":
            raise ConversionError(f"{src} is already a git_scratch checkpoint; to convert it back to Hugging Face "
                                  "format, pass --to-hf")
        try:
            cfg = config_from_hf(hf_cfg)
        except (ValueError, TypeError) as e:
            raise ConversionError(f"{src / 'config.json'}: {e}") from None
        source = read_weights(src, trust_pickle)
        state = _cast(hf_to_ours(source, cfg), torch_dtype)
        config_out, dropped = cfg.to_dict(), DROPPED
    else:
        hf_cfg = read_config(src)
        try:
            cfg = GitConfig.from_dict(hf_cfg)
        except (ValueError, TypeError) as e:
            raise ConversionError(f"{src / 'config.json'}: not a git_scratch checkpoint config ({e})") from None
        try:
            config_out = config_to_hf(cfg)  # refuses what transformers has no form for (text.norm "pre")
        except ValueError as e:
            raise ConversionError(f"{src}: {e}") from None
        if not (src / "model.safetensors").is_file():
            raise ConversionError(f"{src}: no model.safetensors")
        source = _read_one(src / "model.safetensors")
        check_complete(source, expected_shapes(cfg), "git_scratch")
        state = ours_to_hf(_cast(source, torch_dtype))
        if cfg.text.tie_embeddings:
            state.pop("output.weight")  # transformers re-ties it on load
        config_out["dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
        dropped = ()
        if cfg.text.embed_ln_eps not in (None, cfg.text.ln_eps):  # e.g. an original checkpoint's 1e-8
            warnings.append(f"text.embed_ln_eps {cfg.text.embed_ln_eps:g} has no Hugging Face form: transformers' "
                            f"text embeddings use layer_norm_eps {cfg.text.ln_eps:g}, as its own conversion of the "
                            "original checkpoints does (the outputs move slightly)")

    mismatch = check_tokenizer(files, cfg) if files else None
    copied: list[str] = []

    def fill(tmp: Path) -> None:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config_out, indent=2) + "\n")
        if files:
            copied.extend(_copy_tokenizer_files(files, tmp))

    try:
        _write_atomically(dst, fill, overwrite)
    except OSError as e:  # permissions, a full disk: one line, not a traceback
        raise ConversionError(f"cannot write {dst}: {e.strerror or e}") from None
    warnings += [mismatch] if mismatch else []
    if not any(name in copied for name in PREPROCESSOR_FILES):
        warnings.append(no_preprocessing_settings(files or src))
    return {"tensors": len(state), "dropped": sorted(set(source) & set(dropped)), "copied": copied,
            "warnings": warnings, "original": original}
