"""Hugging Face GIT `config.json` <-> our GitConfig: the config half of the name table (mapping.py has the weights).

Missing keys take transformers' defaults, so a minimal config.json reads as transformers reads it.
"""

from __future__ import annotations

from git_scratch.config import GitConfig, TextConfig, VisionConfig, check_act


def _square(v, where: str) -> int:
    """HF allows image_size/patch_size as an int or a pair; GIT only ever uses squares."""
    if isinstance(v, (list, tuple)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"{where}: only square sizes are supported, got {v!r}")
        v = v[0]
    return int(v)


def config_from_hf(hf: dict) -> GitConfig:
    """Build from a Hugging Face GIT `config.json` dict. Missing keys take transformers' defaults."""
    if hf.get("model_type", "git") != "git":
        raise ValueError(f"not a GIT config: model_type is {hf.get('model_type')!r}, expected 'git'")
    v = hf.get("vision_config") or {}
    vision = VisionConfig(
        dim=v.get("hidden_size", 768),
        n_layers=v.get("num_hidden_layers", 12),
        n_heads=v.get("num_attention_heads", 12),
        mlp_dim=v.get("intermediate_size", 3072),
        image_size=_square(v.get("image_size", 224), "vision_config.image_size"),
        patch_size=_square(v.get("patch_size", 16), "vision_config.patch_size"),
        n_channels=v.get("num_channels", 3),
        act=check_act(v.get("hidden_act", "quick_gelu"), "vision_config.hidden_act"),
        ln_eps=v.get("layer_norm_eps", 1e-5),
    )
    eos = hf.get("eos_token_id", 102)
    if isinstance(eos, list):  # HF allows several; GIT checkpoints have one
        if len(eos) != 1:
            raise ValueError(f"eos_token_id: only one id is supported, got {eos}")
        eos = eos[0]
    text = TextConfig(
        vocab_size=hf.get("vocab_size", 30522),
        dim=hf.get("hidden_size", 768),
        n_layers=hf.get("num_hidden_layers", 6),
        n_heads=hf.get("num_attention_heads", 12),
        mlp_dim=hf.get("intermediate_size", 3072),
        act=check_act(hf.get("hidden_act", "gelu"), "hidden_act"),
        ln_eps=hf.get("layer_norm_eps", 1e-12),
        max_positions=hf.get("max_position_embeddings", 1024),
        pad_id=hf.get("pad_token_id", 0),
        bos_id=hf.get("bos_token_id", 101),
        eos_id=eos,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    return GitConfig(vision=vision, text=text, n_frames=hf.get("num_image_with_embedding"))


def config_to_hf(cfg: GitConfig) -> dict:
    """A Hugging Face `config.json` dict that `transformers.GitConfig` reads back to this config."""
    v, t = cfg.vision, cfg.text
    if t.norm != "post":
        raise ValueError(f"text.norm is {t.norm!r}: transformers' GIT has only post-LayerNorm decoder blocks, so "
                         "this model has no Hugging Face form (keep it as a git_scratch checkpoint)")
    return {
        "architectures": ["GitForCausalLM"],
        "model_type": "git",
        "vision_config": {
            "model_type": "git_vision_model",
            "hidden_size": v.dim,
            "num_hidden_layers": v.n_layers,
            "num_attention_heads": v.n_heads,
            "intermediate_size": v.mlp_dim,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": v.n_channels,
            "hidden_act": v.act,
            "layer_norm_eps": v.ln_eps,
        },
        "vocab_size": t.vocab_size,
        "hidden_size": t.dim,
        "num_hidden_layers": t.n_layers,
        "num_attention_heads": t.n_heads,
        "intermediate_size": t.mlp_dim,
        "hidden_act": t.act,
        "layer_norm_eps": t.ln_eps,
        "max_position_embeddings": t.max_positions,
        "pad_token_id": t.pad_id,
        "bos_token_id": t.bos_id,
        "eos_token_id": t.eos_id,
        "tie_word_embeddings": t.tie_embeddings,
        "num_image_with_embedding": cfg.n_frames,
    }
