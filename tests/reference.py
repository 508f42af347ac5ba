"""Build reference checkpoints with transformers itself (random init, fixed seed, save_pretrained).

There is no model hub here, so every parity test starts from a randomly initialised
`transformers.GitForCausalLM`, saved the way published checkpoints are, converted by our
converter and loaded by `git_scratch.load`: the same path a user's microsoft/git-base-coco takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import git_scratch
from git_scratch.convert import convert

# HF GitConfig keyword arguments per test shape. initializer_range 0.1 (vision and text) makes the
# output depend on the image; at transformers' default 0.02 every image yields the same words.
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   image_size=32, patch_size=8, initializer_range=0.1)
TINY_TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64, initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0)
SHAPES = {
    "tiny": dict(vision_config=TINY_VISION, **TINY_TEXT),
    "tiny-video": dict(vision_config=TINY_VISION, num_image_with_embedding=3, **TINY_TEXT),
    # every activation and epsilon off its default, odd sizes, a non-224 image and a tied LM head
    "odd": dict(
        vision_config=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=3,
                           image_size=40, patch_size=10, hidden_act="gelu_new", layer_norm_eps=1e-6,
                           initializer_range=0.1),
        vocab_size=101, hidden_size=40, intermediate_size=72, num_hidden_layers=3, num_attention_heads=5,
        hidden_act="relu", layer_norm_eps=1e-7, max_position_embeddings=40, initializer_range=0.1,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),
    "odd-silu": dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-3,
                           initializer_range=0.1),
        vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        hidden_act="silu", layer_norm_eps=1e-5, max_position_embeddings=32, initializer_range=0.1,
        tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),
    # the tiny shape with the real 30,522-word BERT vocabulary and GIT's real ids ([CLS] bos, [SEP] eos, [PAD] 0)
    "words": dict(vision_config=TINY_VISION, **{**TINY_TEXT, "vocab_size": 30522, "bos_token_id": 101,
                                                 "eos_token_id": 102}),
    # published shapes (transformers' defaults are git-base); 0.02 init as published models' scale
    "git-base": dict(),
    "git-large": dict(vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                         num_attention_heads=16, patch_size=14)),
    "git-base-vatex": dict(num_image_with_embedding=6),
}
SHAPES["words-video"] = dict(SHAPES["words"], num_image_with_embedding=3)


@dataclass
class Reference:
    name: str
    hf: object  # transformers.GitForCausalLM, eval mode
    ours: git_scratch.GIT
    hf_dir: Path
    our_dir: Path

    @property
    def image_size(self) -> int:
        return self.ours.config.vision.image_size

    def pixels(self, batch: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        shape = (batch, self.ours.config.n_frames, 3) if self.ours.config.n_frames else (batch, 3)
        return torch.randn(*shape, self.image_size, self.image_size, generator=g)

    def ids(self, batch: int, length: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + 1000)
        ids = torch.randint(3, self.ours.config.text.vocab_size, (batch, length), generator=g)
        ids[:, 0] = self.ours.config.text.bos_id
        return ids


def build(name: str, root: Path, seed: int = 0, eos_bias: float = 0.0, files: dict | None = None,
          **overrides) -> Reference:
    """The one reference builder: a random-init transformers GIT of shape `name` (+ HF config `overrides`),
    saved, converted by our converter and loaded by ours.

    `eos_bias` is added to the LM head's bias at [SEP] before saving: a checkpoint that ends sequences
    after a few tokens, so EOS handling and padding really happen. `files`: {name: source path or text}
    written beside the weights before conversion (tokenizer, preprocessor settings).
    """
    from transformers import GitConfig, GitForCausalLM

    kwargs = {**SHAPES[name], **overrides}
    torch.manual_seed(seed)
    hf = GitForCausalLM(GitConfig(**kwargs)).eval()
    with torch.no_grad():
        hf.output.bias[hf.config.eos_token_id] += eos_bias
    hf_dir, our_dir = root / "hf", root / "ours"
    hf.save_pretrained(hf_dir)
    for fname, src in (files or {}).items():
        (hf_dir / fname).write_bytes(src.read_bytes() if isinstance(src, Path) else src.encode())
    convert(hf_dir, our_dir)
    return Reference(name, hf, git_scratch.load(our_dir), hf_dir, our_dir)
