"""Which image patches each generated word looked at: attention maps per new token, and a picture of them.

    explain(model, tokenizer, pixel_values, prompt_ids)  ->  [{"token", "id", "map"}, ...]   maps.py
    picture(image, words, title)                         ->  one PIL image: the image, a panel per word  picture.py
"""

from .maps import explain
from .picture import picture

__all__ = ["explain", "picture"]
