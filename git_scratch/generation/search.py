"""Greedy decoding and sampling over a decoder's `prefill` / `decode_step` (decoders.py), with transformers'
logits processors in its order. Shapes: the legend in model.py.
"""

from __future__ import annotations

import torch

from .options import GenerationOptions


# ---------------------------------------------------------------- logits processors (transformers' order)
def no_early_eos(scores: torch.Tensor, n_new: int, min_new_tokens: int, eos: int) -> torch.Tensor:
    """min_new_tokens: EOS is impossible until n_new tokens have been generated. In place."""
    if n_new < min_new_tokens:
        scores[:, eos] = float("-inf")
    return scores


def warp(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Sampling warpers: temperature, then top-k, then top-p (nucleus), each a no-op at its default."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1])).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        drop = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p  # the low tail holding 1 - top_p
        drop[..., -1:] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores


CHECK_EVERY = 8  # steps between looks at "has every row finished?": the only host wait in the loop


def search(dec, ids, lengths, o: GenerationOptions, generator=None, on_token=None):
    """Greedy or sampled tokens for R rows: (new tokens (R, n), token log-probs (R, n), lengths (R,)).

    The loop decides on the device; the host looks at "every row finished" once every CHECK_EVERY steps
    (every step when streaming, which reads each token anyway). Steps after the last row finished only
    pad, and the result is cut at the longest row, so the ids are those of a check at every step.
    NB: sampling draws from `generator` in those steps too, so after the call it stands up to
    CHECK_EVERY - 1 draws further on than a loop that looked every step would leave it.
    """
    R, dev = ids.shape[0], ids.device
    logits = dec.prefill(ids, lengths)
    new = torch.full((R, o.max_new_tokens), o.pad, dtype=torch.long, device=dev)
    logprobs = torch.zeros(R, o.max_new_tokens, device=dev)
    n_new = torch.zeros(R, dtype=torch.long, device=dev)
    done = torch.zeros(R, dtype=torch.bool, device=dev)
    every = 1 if on_token is not None else CHECK_EVERY
    for i in range(o.max_new_tokens):
        scores = no_early_eos(logits.float(), i, o.min_new_tokens, o.eos)  # (R, V)
        if o.do_sample:
            scores = warp(scores, o.temperature, o.top_k, o.top_p)
            tok = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)[:, 0]
        else:
            tok = scores.argmax(dim=-1)
        tok = tok.masked_fill(done, o.pad)  # finished rows are padded
        new[:, i] = tok
        logprobs[:, i] = scores.log_softmax(dim=-1).gather(1, tok[:, None])[:, 0].masked_fill(done, 0.0)
        n_new += ~done
        done |= tok == o.eos
        if on_token is not None:
            on_token(tok)
        if i + 1 == o.max_new_tokens or ((i + 1) % every == 0 and bool(done.all())):
            break
        logits = dec.decode_step(tok, lengths + i)
    n = int(n_new.max())  # the longest row: where a check at every step would have stopped
    return new[:, :n], logprobs[:, :n], n_new
