"""`generate`: captions, answers and continuations as token ids, like transformers' generate.

    image ─▶ encode_image (once) ─▶ prefill: the decoder over the image tokens alone (their keys/values),
                                     then the prompts ─▶ logits ─▶ pick ─▶ decode_step(tokens, slots) ─▶ ...

decoders.py holds the two stages (over the cache, or the full forward each step); search.py picks tokens
greedily or by sampling, beam.py runs transformers' beam search, original.py the original GIT's.
Ids equal transformers' generate token for token (tests). Shapes: the legend in model.py.
"""

from __future__ import annotations

from typing import Callable

import torch

from .beam import beam_search
from .compiled import compiled_decoder
from .decoders import decoder
from .options import Generation, GenerationOptions, request
from .original import original_generate
from .search import search


@torch.no_grad()
def generate(model, pixel_values=None, input_ids=None, attention_mask=None, *, image=None, prompts_per_image=None,
             generator: torch.Generator | None = None, return_scores: bool = False,
             on_token: Callable[[torch.Tensor], None] | None = None, **options):
    """Captions (no input_ids), answers or continuations (a prompt) as token ids, like transformers' generate.

    pixel_values (Bi, 3, H, W) or video (Bi, F, 3, H, W), or `image` = model.encode_image(pixel_values).
    input_ids: None ([CLS] per image), a tensor (P, T) with an optional attention_mask (any padding side),
    or a list of id lists; one prompt for every image, or k prompts for each image, image-major (image 0's k,
    then image 1's, ...): an image's keys/values are computed once and serve its k prompts (k = 1: one each).
    prompts_per_image: how many of the prompts (image-major) are each image's, where they differ (an image's
    keys/values are still computed once; each prompt's rows read a copy).
    `options`: GenerationOptions' fields (max_new_tokens, num_beams, use_cache, ...), checked first;
    compat="original": the original GIT's beam search and its options (original.original_generate).
    Returns (P * num_return_sequences, T + n) ids, the prompt as given then the new tokens, finished rows
    padded; with `return_scores` a `Generation`. `on_token(tokens (R,))` streams greedy/sampled steps.

        ids = model.generate(pixels, max_new_tokens=20, num_beams=3)
        img = model.encode_image(pixels); a = model.generate(image=img, input_ids=question_ids)
        two_each = model.generate(pixels[:2], input_ids=[q0_img0, q1_img0, q0_img1, q1_img1])
        two_one = model.generate(pixels[:2], input_ids=[q0_img0, q1_img0, q0_img1], prompts_per_image=[2, 1])
    """
    if options.get("compat") == "original":  # the original GIT's beam search (original.py)
        return original_generate(model, pixel_values, input_ids, attention_mask, image=image,
                                 prompts_per_image=prompts_per_image, return_scores=return_scores,
                                 on_token=on_token, generator=generator, **options)
    o = GenerationOptions(**options).resolve(model.config.text)
    ids, lengths, shown, image_of = request(model, pixel_values, image, input_ids, attention_mask, o,
                                            on_token is not None, prompts_per_image)

    if image is None:
        image = model.encode_image(pixel_values)  # the only vision encoder call: once per image
    K = o.num_beams if o.num_beams > 1 else o.num_return_sequences  # rows per prompt, in repeat_interleave order
    ids, lengths = ids.repeat_interleave(K, dim=0), lengths.repeat_interleave(K)
    # text slots: the prompt, then every new token but the last, which is never fed back
    dec = decoder(model, image, len(ids), ids.shape[1] + o.max_new_tokens - 1, o.use_cache,
                  compiled_decoder if o.compile else None, image_of)

    if o.num_beams == 1:
        new, token_logprobs, n_new = search(dec, ids, lengths, o, generator, on_token)
        scores = token_logprobs.sum(dim=-1)
    else:
        b = beam_search(dec, ids, lengths, K, o)
        n_ret = o.num_return_sequences
        n_new = b.done_len[:, :n_ret].flatten()
        n = int(n_new.max())
        new = b.done_tokens[:, :n_ret, :n].flatten(0, 1)
        token_logprobs = b.done_logprobs[:, :n_ret, :n].flatten(0, 1)
        scores = b.done_score[:, :n_ret].flatten()
    sequences = torch.cat([shown.repeat_interleave(o.num_return_sequences, dim=0).to(new.dtype), new], dim=1)
    if return_scores:
        return Generation(sequences, scores, token_logprobs.sum(dim=-1), token_logprobs, n_new)
    return sequences
