"""git_scratch: a from-scratch PyTorch GIT (Generative Image-to-text Transformer)."""

from .config import GitConfig, TextConfig, VisionConfig
from .init import init_checkpoint, init_weights, save
from .load import load
from .mask import git_mask
from .model import GIT, GitOutput
from .processor import Processor

__all__ = [
    "GIT",
    "GitConfig",
    "GitOutput",
    "Processor",
    "TextConfig",
    "VisionConfig",
    "git_mask",
    "init_checkpoint",
    "init_weights",
    "load",
    "save",
]
