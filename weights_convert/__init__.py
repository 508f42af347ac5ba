"""Hugging Face GIT checkpoints <-> git_scratch checkpoints. See mapping.py for the name table."""

from .convert import ConversionError, convert, hf_to_ours, ours_to_hf, read_weights

__all__ = ["ConversionError", "convert", "hf_to_ours", "ours_to_hf", "read_weights"]
