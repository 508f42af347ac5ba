"""Beam search as transformers runs it: the bookkeeping of finished hypotheses and the length penalty
(`beam_step`, a small function with its own test), and the loop over a decoder (`beam_search`).
Shapes: the legend in model.py (P prompts, K beams, R = P * K rows, M most new tokens, V vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .options import GenerationOptions
from .search import CHECK_EVERY, no_early_eos

NEG = -1.0e9  # transformers' "impossible" beam score; the same constant keeps ties and sums bitwise equal


def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (P, B, ...) -> (P, J, ...): x[p, idx[p, j]]."""
    return x.gather(1, idx.view(*idx.shape, *[1] * (x.ndim - 2)).expand(*idx.shape, *x.shape[2:]))


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
    stop: torch.Tensor  # () bool, on the device: nothing can change any more

    @classmethod
    def start(cls, P: int, K: int, M: int, fill: int, device=None) -> Beams:
        tokens = torch.full((P, K, M), fill, dtype=torch.long, device=device)
        logprobs = torch.zeros(P, K, M, device=device)
        score = torch.zeros(P, K, device=device)
        score[:, 1:] = NEG  # all K beams start as the same prompt: expand only the first at step 0
        return cls(tokens, logprobs, score, tokens.clone(), logprobs.clone(), torch.full((P, K), NEG, device=device),
                   torch.zeros(P, K, dtype=torch.long, device=device),
                   torch.zeros(P, K, dtype=torch.bool, device=device), torch.ones(P, 1, dtype=torch.bool, device=device),
                   torch.zeros((), dtype=torch.bool, device=device))


def beam_step(b: Beams, logprobs: torch.Tensor, t: int, eos: int, length_penalty: float,
              early_stopping: bool | str) -> torch.Tensor:
    """Advance `b` by new token t given the K beams' next-token log-probs (P*K, V).

    Returns the source row of each running beam (P*K,), for reordering the cache. Sets `b.stop`.
    Once `b.stop`, further steps change no finished hypothesis: every prompt is closed (its new ones get NEG)
    or holds K finished ones that beat anything still running, so the loop may look at it late.
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
    full = b.done.all() & (early_stopping is True)
    b.stop = ~b.open.any() | full | ends.all()  # a tensor: the loop looks at it only now and then
    return rows


def beam_search(dec, ids, lengths, K: int, o: GenerationOptions) -> Beams:
    """Beam search over R = P * K rows (each prompt repeated K times). Returns the final `Beams`."""
    R = ids.shape[0]
    logits = dec.prefill(ids, lengths)
    # NB: transformers fills finished beams with `pad_token_id or eos_token_id`, so a pad id of 0 (every
    # GIT checkpoint's [PAD]) counts as missing and beams are padded with EOS. We keep that, for equal ids.
    b = Beams.start(R // K, K, o.max_new_tokens, o.pad or o.eos, device=ids.device)
    for t in range(o.max_new_tokens):
        logprobs = no_early_eos(logits.float().log_softmax(dim=-1), t, o.min_new_tokens, o.eos)
        src = beam_step(b, logprobs, t, o.eos, o.length_penalty, o.early_stopping)
        if t + 1 == o.max_new_tokens or ((t + 1) % CHECK_EVERY == 0 and bool(b.stop)):  # the only host wait
            break
        dec.reorder(src)
        logits = dec.decode_step(b.tokens[:, :, t].reshape(R), lengths + t)
    return b
