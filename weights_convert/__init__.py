"""Hugging Face GIT checkpoints <-> git_scratch checkpoints. See mapping.py for the name table."""

from .convert import ConversionError, convert, hf_to_ours, ours_to_hf, read_weights
from .hf_config import config_from_hf, config_to_hf

__all__ = ["ConversionError", "config_from_hf", "config_to_hf", "convert", "hf_to_ours", "ours_to_hf", "read_weights"]
