"""The one-call API: `caption(images)` and `answer(images, questions)`, the command line's records from Python."""

from .api import answer, caption, opened

__all__ = ["answer", "caption", "opened"]
