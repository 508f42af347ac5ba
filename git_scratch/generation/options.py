"""What a caller hands the model: pixels and prompts, checked before any compute; prompts in any padding
become right-padded rows. And what `generate(..., return_scores=True)` hands back: a `Generation`.

Kept apart from generate.py so that file holds only the decoding algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..constants import check_compat
from ..model import check_pixels
from .checks import decoding_error, room_error


def prompts(input_ids, attention_mask, n_images: int, bos: int, pad: int, eos: int, device):
    """-> (right-padded real tokens (P, T), lengths (P,), the prompt part of the output (P, T')).

    A tensor comes back as given (transformers' format: left padding, then the new tokens). A list of
    sequences is left-padded with `pad`, as a tokenizer with padding_side="left" would.
    NB: like transformers, with no attention_mask a prompt's `pad` ids count as padding (unless pad == eos).
    """
    if input_ids is None:  # [CLS] per image: known on the host, no look at the device
        ids = torch.full((max(n_images, 1), 1), bos, dtype=torch.long, device=device)
        return ids, torch.ones(len(ids), dtype=torch.long, device=device), ids
    if isinstance(input_ids, (list, tuple)):
        seqs = [torch.as_tensor(s, dtype=torch.long, device=device).flatten() for s in input_ids]
        if not seqs or attention_mask is not None:
            raise ValueError("input_ids as a list: give at least one prompt, and no attention_mask (lengths say it)")
        T = max(len(s) for s in seqs)
        shown = torch.stack([F.pad(s, (T - len(s), 0), value=pad) for s in seqs])
        keep = torch.stack([F.pad(torch.ones_like(s, dtype=torch.bool), (T - len(s), 0)) for s in seqs])
    else:
        shown = torch.as_tensor(input_ids, device=device)
        shown = shown[None] if shown.ndim == 1 else shown
        if attention_mask is not None:
            keep = torch.as_tensor(attention_mask, device=device)
            keep = keep[None] if keep.ndim == 1 else keep
            if keep.shape != shown.shape:
                raise ValueError(f"attention_mask {tuple(keep.shape)} does not match input_ids {tuple(shown.shape)}")
            keep = keep.bool()
        elif pad != eos and bool((shown == pad).any()):
            keep = shown != pad
        else:
            keep = torch.ones_like(shown, dtype=torch.bool)
    lengths = keep.sum(dim=1)
    T = int(lengths.max()) if len(lengths) else 0
    # stable sort moves each row's real tokens to the front, in order: right padding
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :T]
    ids = shown.gather(1, order).masked_fill(torch.arange(T, device=device) >= lengths[:, None], pad)
    return ids, lengths, shown


@dataclass
class GenerationOptions:
    """Generation settings, checked when made (transformers' names and defaults, except top_k: 0 = off)."""

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # beams: True, False or "never" (transformers' heuristics)
    num_return_sequences: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_id: int | None = None  # None: the model's
    pad_token_id: int | None = None
    use_cache: bool = True  # False: the whole sequence through forward each step (slow; the reference)
    compile: bool = False  # the decode step under torch.compile; on CUDA replayed from a CUDA graph (compiled.py)
    compat: str = "transformers"  # "original": the original GIT's beam search instead (original.py)

    def __post_init__(self):
        check_compat(self.compat)
        if why := decoding_error(self.max_new_tokens, self.num_beams, self.do_sample, self.temperature, self.top_k,
                                 self.top_p):
            raise ValueError(why)
        if self.min_new_tokens < 0 or self.num_return_sequences < 1:
            raise ValueError(f"need min_new_tokens >= 0 and num_return_sequences >= 1, got {self.min_new_tokens}, "
                             f"{self.num_return_sequences}")
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) > num_beams ({self.num_beams}): "
                             "beam search returns at most num_beams sequences (sample with do_sample=True for more)")
        if self.compile and not self.use_cache:
            raise ValueError("compile=True compiles the cached decode step: it needs use_cache=True")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")

    def resolve(self, text) -> GenerationOptions:
        """The model's (config `text`) EOS and pad ids where none are given; then `eos`, `pad` are set."""
        self.eos = text.eos_id if self.eos_token_id is None else self.eos_token_id
        self.pad = text.pad_id if self.pad_token_id is None else self.pad_token_id
        return self


def check_request(model, pixel_values, image, shown_rows: int, lengths, o: GenerationOptions,
                  streaming: bool, prompts_per_image=None) -> int:
    """The errors that depend on the model and the inputs, before any compute. Returns the number of images."""
    if (pixel_values is None) == (image is None):
        raise ValueError("give exactly one of pixel_values and image (from model.encode_image)")
    if pixel_values is not None:
        check_pixels(model.config, pixel_values)  # channels, video frames
        n_images = pixel_values.shape[0]
    else:
        D = model.config.text.dim
        if image.ndim != 3 or image.shape[-1] != D:
            raise ValueError(f"image must be (B, N, {D}) from model.encode_image, got {tuple(image.shape)}")
        n_images = image.shape[0]
    if streaming and o.num_beams > 1:
        raise ValueError("on_token streams greedy or sampled tokens; beam search knows its tokens only at the end")
    if prompts_per_image is not None:
        counts = [int(c) for c in prompts_per_image]  # a list or a tensor of counts
        if len(counts) != n_images or sum(counts) != shown_rows or min(counts, default=0) < 1:
            raise ValueError(f"prompts_per_image {counts}: need one count of at least 1 for each of the {n_images} "
                             f"images, adding up to the {shown_rows} prompts")
    elif shown_rows != 1 and shown_rows % n_images:
        raise ValueError(f"batch mismatch: {n_images} images for {shown_rows} prompts (give one prompt for all "
                         "images, the same number of prompts for each image: image 0's, then image 1's, ..., "
                         "or say how many each has: prompts_per_image)")
    shortest, longest = torch.stack([lengths.min(), lengths.max()]).tolist() if len(lengths) else (0, 0)
    if shortest == 0:
        raise ValueError("empty prompt: every prompt needs at least one token ([CLS] for a caption)")
    if why := room_error(longest, o.max_new_tokens, model.config.text.max_positions):
        raise ValueError(why)
    return n_images


def request(model, pixel_values, image, input_ids, attention_mask, o: GenerationOptions, streaming: bool,
            prompts_per_image=None):
    """A generate call's inputs, checked (check_request) -> (right-padded prompts (P, T), lengths (P,), the
    prompt part of the output (P, T'), image_of): P a multiple of the images (a single prompt is repeated for
    every image), image_of None; or, with `prompts_per_image` that differ, image_of (P,) the image of each."""
    n_guess = pixel_values.shape[0] if pixel_values is not None else image.shape[0] if image is not None else 1
    ids, lengths, shown = prompts(input_ids, attention_mask, n_guess, model.config.text.bos_id, o.pad, o.eos,
                                  model.device)
    n_images = check_request(model, pixel_values, image, len(shown), lengths, o, streaming, prompts_per_image)
    if prompts_per_image is not None and len({int(c) for c in prompts_per_image}) > 1:
        counts = torch.as_tensor([int(c) for c in prompts_per_image], device=model.device)
        return ids, lengths, shown, torch.arange(n_images, device=model.device).repeat_interleave(counts)
    if len(shown) == 1 and n_images > 1:  # one prompt for every image
        ids, lengths, shown = ids.expand(n_images, -1), lengths.expand(n_images), shown.expand(n_images, -1)
    return ids, lengths, shown, None


@dataclass
class Generation:
    """What `generate(..., return_scores=True)` returns."""

    sequences: torch.Tensor  # (R, T + n): the prompt as given, then the new tokens; finished rows padded
    scores: torch.Tensor  # (R,) what the search ranked: beams' length-penalised score (sequences_scores), else logprob
    logprob: torch.Tensor  # (R,) summed log-probability of the new tokens (EOS included), never length-penalised
    token_logprobs: torch.Tensor  # (R, n) log-probability of each new token under the processed logits; 0 after the end
    lengths: torch.Tensor  # (R,) new tokens per row, EOS included
