"""The name tables applied: rename a state dict's keys, cut packed tensors, check the result is complete.

The tables themselves live in mapping.py (Hugging Face) and original.py (the original GIT); this file only
reads them, forwards or backwards. Every error names the keys it is about.
"""

from __future__ import annotations

import re

import torch


class ConversionError(ValueError):
    pass


def listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


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
        raise ConversionError(f"{len(unmapped)} source key(s) match no row of the name table: {listing(unmapped)}")
    if ambiguous:
        raise ConversionError(f"source key(s) match two rows of the name table: {listing(ambiguous)}")
    targets = list(out.values())
    if len(set(targets)) != len(targets):
        dups = {t for t in targets if targets.count(t) > 1}
        raise ConversionError(f"two source keys land on one target: {listing(dups)}")
    return out


def lookup(key: str, table: dict[str, str]) -> str | None:
    """The name `table` gives `key`, or None."""
    try:
        return rename([key], table)[key]
    except ConversionError:
        return None


def inverse(table: dict[str, str]) -> dict[str, str]:
    return {dst: src for src, dst in table.items()}


def strip_wrappers(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Every leading `prefix` removed, as the original's loader removes `module.`; two keys becoming one is an
    error."""
    out = {}
    for key, value in state.items():
        name = key
        while name.startswith(prefix):
            name = name[len(prefix):]
        if name in out:
            raise ConversionError(f"two source keys become {name} once '{prefix}' prefixes are stripped")
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
        errors.append(f"missing {len(missing)} {what} parameter(s): {listing(missing)}")
    if extra:
        errors.append(f"unexpected {len(extra)} {what} parameter(s): {listing(extra)}")
    if wrong:
        errors.append(f"wrong shape for {len(wrong)} {what} parameter(s): {'; '.join(wrong[:8])}")
    if errors:
        raise ConversionError("; ".join(errors))
