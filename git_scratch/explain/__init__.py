"""Which image patches each generated word looked at: attention maps per new token, and a picture of them.

    explain(model, tokenizer, pixel_values, prompt_ids)  ->  [{"token", "id", "map"}, ...]   maps.py
    picture(image, words, title)                         ->  one PIL image: the image, a panel per word  picture.py
"""

from .maps import explain
from .picture import picture

# What the command line and the server say when asked to explain an ONNX export's words
NEEDS_TORCH = "explain needs the torch checkpoint: an ONNX export has no attention maps"

__all__ = ["NEEDS_TORCH", "explain", "picture"]
