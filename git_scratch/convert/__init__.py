"""Hugging Face GIT checkpoints <-> git_scratch checkpoints, and the original GIT's model.pt -> git_scratch.

The name tables: mapping.py (Hugging Face), original.py (github.com/microsoft/GenerativeImage2Text).
"""

from .convert import ConversionError, convert, hf_to_ours, ours_to_hf, read_weights
from .hf_config import config_from_hf, config_to_hf

__all__ = ["ConversionError", "config_from_hf", "config_to_hf", "convert", "hf_to_ours", "ours_to_hf", "read_weights"]
