"""git_scratch: a from-scratch PyTorch GIT (Generative Image-to-text Transformer)."""

from .config import GitConfig, TextConfig, VisionConfig
from .generation.generate import generate
from .init import init_weights
from .training.init_checkpoint import init_checkpoint
from .load import load, save
from .mask import git_mask
from .model import GIT, GitOutput
from .generation.options import Generation, GenerationOptions
from .pipeline import answer, caption
from .preprocessing.processor import Processor
from .preprocessing.tokenizer import Tokenizer

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
    "answer",
    "caption",
    "generate",
    "git_mask",
    "init_checkpoint",
    "init_weights",
    "load",
    "save",
]
