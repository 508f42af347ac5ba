"""git_scratch: a from-scratch PyTorch GIT (Generative Image-to-text Transformer)."""

from .config import GitConfig, TextConfig, VisionConfig
from .load import load
from .mask import git_mask
from .model import GIT, GitOutput

__all__ = ["GIT", "GitConfig", "GitOutput", "TextConfig", "VisionConfig", "git_mask", "load"]

try:  # the processor arrives with its own module; keep the core importable without it
    from .processor import Processor  # noqa: F401

    __all__.append("Processor")
except ImportError:
    pass
