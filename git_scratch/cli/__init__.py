"""The `git-scratch` command, and the only home of argparse: `python -m git_scratch.cli` runs it too."""

from .main import main

__all__ = ["main"]
