"""git_scratch: a from-scratch PyTorch GIT (Generative Image-to-text Transformer)."""

from .config import GitConfig, TextConfig, VisionConfig
from .generate import generate
from .init import init_checkpoint, init_weights
from .load import load, save
from .mask import git_mask
from .model import GIT, GitOutput
from .inputs import Generation, GenerationOptions
from .processor import Processor
from .tokenizer import Tokenizer

__all__ = [
    "GIT",
    "Generation",
    "GenerationOptions",
    "GitConfig",
    "GitOutput",
    "Processor",
    "TextConfig",
    "Tokenizer",
    "VisionConfig",
    "generate",
    "git_mask",
    "init_checkpoint",
    "init_weights",
    "load",
    "save",
]
