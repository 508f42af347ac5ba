"""Hugging Face GIT checkpoints <-> git_scratch checkpoints, and the original GIT's model.pt -> git_scratch.

convert.py: the three directions. The name tables: mapping.py (Hugging Face), original.py
(github.com/microsoft/GenerativeImage2Text); rename.py applies them; files.py reads and writes checkpoints.
"""

from .convert import convert, hf_to_ours, ours_to_hf
from .files import read_weights
from .hf_config import config_from_hf, config_to_hf
from .rename import ConversionError

__all__ = ["ConversionError", "config_from_hf", "config_to_hf", "convert", "hf_to_ours", "ours_to_hf", "read_weights"]
