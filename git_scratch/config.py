"""GIT configuration: one dataclass per tower, plus the whole model.

Our field names follow the project's conventions (`n_*` counts, `*_dim` sizes); Hugging Face's
names appear only in the weight converter (convert/hf_config.py and convert/mapping.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .constants import ACTIVATIONS

# Presets ship inside the package (package data); in a checkout `git_scratch/presets` links to `configs/`.
PRESET_DIR = Path(__file__).resolve().parent / "presets"
NORMS = ("post", "pre")  # text.norm: where the decoder block's LayerNorms sit


def check_act(act: str, where: str) -> str:
    """A config may name only the activations layers.py implements: never a silent fallback."""
    if act not in ACTIVATIONS:
        raise ValueError(f"{where}: unknown activation {act!r}; supported: {', '.join(ACTIVATIONS)}")
    return act


@dataclass
class VisionConfig:
    """CLIP ViT image encoder."""

    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    mlp_dim: int = 3072
    image_size: int = 224
    patch_size: int = 16
    n_channels: int = 3
    act: str = "quick_gelu"
    ln_eps: float = 1e-5

    @property
    def grid(self) -> int:  # patches per side
        return self.image_size // self.patch_size

    @property
    def n_tokens(self) -> int:  # class token + patches, for one frame
        return self.grid**2 + 1


@dataclass
class TextConfig:
    """BERT-style post-LayerNorm text decoder."""

    vocab_size: int = 30522
    dim: int = 768
    n_layers: int = 6
    n_heads: int = 12
    mlp_dim: int = 3072
    act: str = "gelu"
    ln_eps: float = 1e-12
    embed_ln_eps: float | None = None  # the embeddings' LayerNorm; None: ln_eps (the original GIT's is 1e-8)
    max_positions: int = 1024
    pad_id: int = 0
    bos_id: int = 101  # [CLS]
    eos_id: int = 102  # [SEP]
    tie_embeddings: bool = False
    norm: str = "post"  # "post": GIT/BERT (add, then normalise); "pre": normalise, then add, + a final LayerNorm


@dataclass
class GitConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    n_frames: int | None = None  # video checkpoints: one temporal embedding per frame

    def __post_init__(self):
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = TextConfig(**self.text)
        check_act(self.vision.act, "vision.act")
        check_act(self.text.act, "text.act")
        if self.text.norm not in NORMS:
            raise ValueError(f"text.norm must be one of {', '.join(NORMS)}, got {self.text.norm!r}")
        for name, part in (("vision", self.vision), ("text", self.text)):
            if part.dim % part.n_heads:
                raise ValueError(f"{name}: dim {part.dim} is not a multiple of n_heads {part.n_heads}")
        if (v := self.vision).image_size % v.patch_size:
            raise ValueError(f"vision: image_size {v.image_size} is not a multiple of patch_size {v.patch_size}")
        if self.n_frames is not None and self.n_frames < 1:
            raise ValueError(f"n_frames must be None or >= 1, got {self.n_frames}")

    @property
    def n_img_tokens(self) -> int:
        """N: image tokens the decoder sees (all frames of a video, concatenated)."""
        return self.vision.n_tokens * (self.n_frames or 1)

    # ---- our own JSON (presets in configs/, and converted checkpoints) ----
    def to_dict(self) -> dict:
        return {"model_type": "git_scratch", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> GitConfig:
        d = {k: v for k, v in d.items() if k != "source"}  # presets note where their numbers come from
        if d.pop("model_type", "git_scratch") != "git_scratch":
            raise ValueError("not a git_scratch config (model_type is not 'git_scratch')")
        if unknown := set(d) - {"vision", "text", "n_frames"}:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        try:
            return cls(vision=VisionConfig(**d["vision"]), text=TextConfig(**d["text"]), n_frames=d.get("n_frames"))
        except TypeError as e:  # an unknown field inside vision/text
            raise ValueError(f"bad git_scratch config: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> GitConfig:
        d = json.loads(Path(path).read_text())
        if d.get("model_type") == "git":
            raise ValueError(f"{path} is a Hugging Face config.json; convert the checkpoint first "
                             "(git-scratch convert HF_DIR OUT_DIR)")
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def with_overrides(self, settings: list[str]) -> GitConfig:
        """A copy with each "FIELD=VALUE" of `settings` applied ("text.norm=pre", "vision.n_layers=4",
        "n_frames=6"); ValueError naming a field this config has not, or a value its type cannot take."""
        d = self.to_dict()
        for setting in settings:
            name, eq, value = setting.partition("=")
            *part, key = name.strip().split(".")
            section = {"vision": self.vision, "text": self.text}.get(part[0]) if len(part) == 1 else None
            target = section if part else self
            kinds = {f.name: str(f.type) for f in fields(target)} if target is not None else {}
            if not eq or key not in kinds or key in ("vision", "text"):
                raise ValueError(f"--set {setting!r}: not FIELD=VALUE of a config field (vision.*, text.*, n_frames)")
            d_section = d[part[0]] if part else d
            d_section[key] = _parsed(value.strip(), kinds[key], setting)
        return GitConfig.from_dict(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def preset(cls, name: str) -> GitConfig:
        """A published checkpoint shape by name, e.g. `GitConfig.preset("git-base-coco")`."""
        path = PRESET_DIR / f"{name}.json"
        if not path.is_file():
            names = sorted(p.stem for p in PRESET_DIR.glob("*.json"))
            raise ValueError(f"no preset {name!r}; available: {', '.join(names)}")
        return cls.from_json(path)


def _parsed(value: str, kind: str, setting: str):
    """A --set value as the field's type (its annotation, e.g. "float | None") takes it."""
    if value.lower() in ("none", "null") and "None" in kind:
        return None
    try:
        if kind.startswith("bool"):
            return {"true": True, "false": False}[value.lower()]
        return int(value) if kind.startswith("int") else float(value) if kind.startswith("float") else value
    except (KeyError, ValueError):
        raise ValueError(f"--set {setting!r}: {value!r} is not a {kind.split(' ')[0]}") from None
