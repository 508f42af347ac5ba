"""Generation: prefill, step, greedy, sampling and beam search as plain functions over an explicit cache.

    image ─▶ encode_image (once) ─▶ the decoder over the image tokens alone: their keys/values (cache.py)
    prompt ─▶ feed(prompt, slots 0..T-1) ─▶ logits ─▶ pick ─▶ feed(token, slot len + i) ─▶ ...

`Cached` (cache.py) runs the model's own embed_text / mask / run / head, so a change made there reaches
generation by itself; `Uncached` runs the full forward each step (the reference, and the fallback when the
mask breaks the cache). Ids equal transformers' generate token for token (tests); compat="original" runs the
original GIT's beam search instead (beam_original.py). Shapes: the legend in model.py.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .original import original_generate
from .cache import Cached, Uncached, take, why_inexact
from .options import Generation, GenerationOptions, request

NEG = -1.0e9  # transformers' "impossible" beam score; the same constant keeps ties and sums bitwise equal


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


# ---------------------------------------------------------------- greedy and sampling
def search(dec, ids, lengths, o: GenerationOptions, generator=None, on_token=None):
    """Greedy or sampled tokens for R rows: (new tokens (R, n), token log-probs (R, n), lengths (R,))."""
    R, dev = ids.shape[0], ids.device
    logits = dec.feed(ids, torch.zeros(R, 1, dtype=torch.long, device=dev), lengths - 1)
    new = torch.full((R, o.max_new_tokens), o.pad, dtype=torch.long, device=dev)
    logprobs = torch.zeros(R, o.max_new_tokens, device=dev)
    n_new = torch.zeros(R, dtype=torch.long, device=dev)
    done = torch.zeros(R, dtype=torch.bool, device=dev)
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
        if done.all() or i + 1 == o.max_new_tokens:
            break
        logits = dec.feed(tok[:, None], (lengths + i)[:, None], torch.zeros_like(lengths))
    return new[:, : i + 1], logprobs[:, : i + 1], n_new


# ---------------------------------------------------------------- beam search
@dataclass
class Beams:
    """Beam search state for P prompts x K beams, at most M new tokens, with transformers' bookkeeping.

    Running beams extend by one token per step; a beam that emits EOS (or reaches M tokens) becomes a
    finished hypothesis, kept if it ranks among the K best finished ones by score / length**penalty.
    """

    tokens: torch.Tensor  # (P, K, M) running beams' new tokens, `fill` past their end
    logprobs: torch.Tensor  # (P, K, M) their per-token log-probabilities
    score: torch.Tensor  # (P, K) summed log-probabilities
    done_tokens: torch.Tensor  # (P, K, M) finished hypotheses, best first
    done_logprobs: torch.Tensor  # (P, K, M)
    done_score: torch.Tensor  # (P, K) length-penalised scores; NEG for an empty slot
    done_len: torch.Tensor  # (P, K) new tokens, EOS included
    done: torch.Tensor  # (P, K) bool: slot holds a finished hypothesis
    open: torch.Tensor  # (P, 1) bool: a running beam may still beat the worst finished one
    stop: bool = False

    @classmethod
    def start(cls, P: int, K: int, M: int, fill: int, device=None) -> Beams:
        tokens = torch.full((P, K, M), fill, dtype=torch.long, device=device)
        logprobs = torch.zeros(P, K, M, device=device)
        score = torch.zeros(P, K, device=device)
        score[:, 1:] = NEG  # all K beams start as the same prompt: expand only the first at step 0
        return cls(tokens, logprobs, score, tokens.clone(), logprobs.clone(), torch.full((P, K), NEG, device=device),
                   torch.zeros(P, K, dtype=torch.long, device=device),
                   torch.zeros(P, K, dtype=torch.bool, device=device), torch.ones(P, 1, dtype=torch.bool, device=device))


def beam_step(b: Beams, logprobs: torch.Tensor, t: int, eos: int, length_penalty: float,
              early_stopping: bool | str) -> torch.Tensor:
    """Advance `b` by new token t given the K beams' next-token log-probs (P*K, V).

    Returns the source row of each running beam (P*K,), for reordering the cache. Sets `b.stop`.
    `early_stopping`: True stops a prompt once K hypotheses are finished; False stops when the best
    running beam, at its current length, cannot beat the worst finished one; "never" assumes the best
    length is M when length_penalty > 0 (transformers' heuristics, kept exactly).
    """
    P, K, M = b.tokens.shape
    V = logprobs.shape[-1]
    logprobs = logprobs.view(P, K, V)
    # 1. the 2K best (beam, token) continuations: K to go on even if the best K all end here
    top, idx = torch.topk((logprobs + b.score[:, :, None]).view(P, K * V), 2 * K)  # (P, 2K), best first
    src, tok = idx // V, idx % V
    tokens, lps = take(b.tokens, src), take(b.logprobs, src)  # (P, 2K, M)
    tokens[:, :, t] = tok
    lps[:, :, t] = logprobs.view(P, K * V).gather(1, idx)
    ends = (tok == eos) | (t + 1 >= M)  # (P, 2K) stopping criteria: EOS, or the M-th token

    # 2. the K best that do not end keep running
    running = top + ends.to(torch.float32) * NEG
    keep = torch.topk(running, K).indices  # (P, K)
    b.tokens, b.logprobs, b.score = take(tokens, keep), take(lps, keep), take(running, keep)
    rows = (take(src, keep) + torch.arange(P, device=src.device)[:, None] * K).flatten()

    # 3. those of the top K that end become hypotheses, ranked by length-penalised score
    fin = top / ((t + 1) ** length_penalty)
    fin += (b.done.all(dim=-1, keepdim=True) & (early_stopping is True)).to(torch.float32) * NEG  # full, stopping
    fin += (~b.open).to(torch.float32) * NEG  # no improvement possible
    new_done = ends & (torch.arange(2 * K, device=ends.device) < K)
    fin += (~new_done) * NEG
    best = torch.topk(torch.cat([b.done_score, fin], dim=1), K).indices

    def merge(old, new):  # the K best of the finished hypotheses and the new ones
        return take(torch.cat([old, new], dim=1), best)

    b.done_tokens, b.done_logprobs = merge(b.done_tokens, tokens), merge(b.done_logprobs, lps)
    b.done_score = merge(b.done_score, fin)
    b.done_len, b.done = merge(b.done_len, torch.full_like(tok, t + 1)), merge(b.done, new_done)

    # 4. can the best running beam still beat the worst finished hypothesis?
    best_len = M if (early_stopping == "never" and length_penalty > 0.0) else t + 1
    best_possible = b.score[:, :1] / (best_len**length_penalty)
    worst = torch.where(b.done, b.done_score.min(dim=1, keepdim=True).values, NEG)
    b.open = b.open & (best_possible > worst).any(dim=-1, keepdim=True)
    full = bool(b.done.all()) and early_stopping is True
    b.stop = not bool(b.open.any()) or full or bool(ends.all())
    return rows


def beam_search(dec, ids, lengths, K: int, o: GenerationOptions) -> Beams:
    """Beam search over R = P * K rows (each prompt repeated K times). Returns the final `Beams`."""
    R = ids.shape[0]
    logits = dec.feed(ids, torch.zeros(R, 1, dtype=torch.long, device=ids.device), lengths - 1)
    # NB: transformers fills finished beams with `pad_token_id or eos_token_id`, so a pad id of 0 (every
    # GIT checkpoint's [PAD]) counts as missing and beams are padded with EOS. We keep that, for equal ids.
    b = Beams.start(R // K, K, o.max_new_tokens, o.pad or o.eos, device=ids.device)
    for t in range(o.max_new_tokens):
        logprobs = no_early_eos(logits.float().log_softmax(dim=-1), t, o.min_new_tokens, o.eos)
        src = beam_step(b, logprobs, t, o.eos, o.length_penalty, o.early_stopping)
        if b.stop:
            break
        dec.reorder(src)
        logits = dec.feed(b.tokens[:, :, t].reshape(R, 1), (lengths + t)[:, None], torch.zeros_like(lengths))
    return b


# ---------------------------------------------------------------- the entry point
@torch.no_grad()
def generate(model, pixel_values=None, input_ids=None, attention_mask=None, *, image=None,
             generator: torch.Generator | None = None, return_scores: bool = False,
             on_token: Callable[[torch.Tensor], None] | None = None, **options):
    """Captions (no input_ids), answers or continuations (a prompt) as token ids, like transformers' generate.

    pixel_values (Bi, 3, H, W) or video (Bi, F, 3, H, W), or `image` = model.encode_image(pixel_values).
    input_ids: None ([CLS] per image), a tensor (P, T) with an optional attention_mask (any padding side),
    or a list of id lists; one prompt per image, one for every image, or one image for every prompt.
    `options`: GenerationOptions' fields (max_new_tokens, num_beams, use_cache, ...), checked first;
    compat="original": the original GIT's beam search and its options (beam_original.original_generate).
    Returns (P * num_return_sequences, T + n) ids, the prompt as given then the new tokens, finished rows
    padded; with `return_scores` a `Generation`. `on_token(tokens (R,))` streams greedy/sampled steps.

        ids = model.generate(pixels, max_new_tokens=20, num_beams=3)
        img = model.encode_image(pixels); a = model.generate(image=img, input_ids=question_ids)
    """
    if options.get("compat") == "original":  # the original GIT's beam search (beam_original.py)
        return original_generate(model, pixel_values, input_ids, attention_mask, image=image,
                                 return_scores=return_scores, on_token=on_token, generator=generator, **options)
    o = GenerationOptions(**options).resolve(model.config.text)
    ids, lengths, shown = request(model, pixel_values, image, input_ids, attention_mask, o, on_token is not None)

    if image is None:
        image = model.encode_image(pixel_values)  # the only vision encoder call: once per image
    K = o.num_beams if o.num_beams > 1 else o.num_return_sequences  # rows per prompt, in repeat_interleave order
    ids, lengths = ids.repeat_interleave(K, dim=0), lengths.repeat_interleave(K)
    # text slots: the prompt, then every new token but the last, which is never fed back
    N, S = image.shape[1], ids.shape[1] + o.max_new_tokens - 1
    mask = model.mask(N, S, device=model.device)
    if o.use_cache and (why := why_inexact(mask, N)):
        warnings.warn(f"the model's mask does not allow a KV cache ({why}); decoding without one, slower")
    cached = o.use_cache and not why
    dec = Cached(model, image, len(ids), mask) if cached else Uncached(model, image, len(ids), S)

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
