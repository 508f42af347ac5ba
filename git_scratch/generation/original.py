"""The original GIT's beam search (microsoft/GenerativeImage2Text @ faae4fb, layers/decoder.py:
GeneratorWithBeamSearch.search and BeamHypotheses), written anew over our KV cache.

    K = 4 beams, 2K candidates a step, and one finished hypothesis kept per prompt, scored
        sum of log-probs ([SEP] included) / ((5 + L) / 6) ** 0.6,   L = tokens before [SEP], [CLS] and prompt too
    a prompt is done once   best finished score >= best candidate sum / ((5 + max_length - 1) / 6) ** 0.6
    max_length counts every token ([CLS], prompt, [SEP]); a hypothesis that reaches it ends in [SEP] put
    in place of its last new token, whose log-prob stays in the sum.

It is not transformers' beam search (beam.beam_search); the README lists the differences.
Shapes: the legend in model.py (P prompts, K beams, R = P * K rows, M most new tokens, V vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .beam import take
from .decoders import decoder
from .options import Generation, GenerationOptions, request

NEG = -1.0e9  # the original's score for the K - 1 copies of the prompt at the start (decoder.py:1119)


def length_norm(L, alpha: float) -> torch.Tensor:
    """GNMT's length normalisation as the original computes it (decoder.py:1313), in float64 as Python does."""
    return (5 + torch.as_tensor(L, dtype=torch.float64)) ** alpha / 6.0**alpha


@dataclass
class OriginalBeams:
    """P prompts x K running beams, and each prompt's best finished hypothesis (the original keeps one)."""

    tokens: torch.Tensor  # (P, K, M) running beams' new tokens
    logprobs: torch.Tensor  # (P, K, M) their per-token log-probs
    score: torch.Tensor  # (P, K) float32 sums, as the original keeps them
    best: torch.Tensor  # (P, M) best hypothesis' new tokens: [SEP] last, then [SEP] padding (decoder.py:1099)
    best_logprobs: torch.Tensor  # (P, M) its per-token log-probs (at the length limit: the dropped token's last)
    best_sum: torch.Tensor  # (P,) its summed log-prob
    best_score: torch.Tensor  # (P,) float64 normalised score; -inf until one finishes
    best_len: torch.Tensor  # (P,) its new tokens, [SEP] included
    done: torch.Tensor  # (P,) bool, for good

    @classmethod
    def start(cls, P: int, K: int, M: int, eos: int, device=None) -> OriginalBeams:
        tokens = torch.full((P, K, M), eos, dtype=torch.long, device=device)
        logprobs = torch.zeros(P, K, M, device=device)
        score = torch.zeros(P, K, device=device)
        score[:, 1:] = NEG  # decoder.py:1119: the K copies of the prompt, so only the first expands at step 0
        return cls(tokens, logprobs, score, tokens[:, 0].clone(), logprobs[:, 0].clone(), score[:, 0].clone(),
                   torch.full((P,), float("-inf"), dtype=torch.float64, device=device),
                   torch.zeros(P, dtype=torch.long, device=device), torch.zeros(P, dtype=torch.bool, device=device))


def original_step(b: OriginalBeams, logprobs: torch.Tensor, t: int, lengths: torch.Tensor, max_length: int,
                  eos: int, alpha: float) -> torch.Tensor:
    """Advance `b` by new token t, given the beams' next-token log-probs (P*K, V) and prompt lengths (P,).

    decoder.py:1128-1248, vectorised over prompts. Returns each running beam's source row (P*K,)."""
    P, K, M = b.tokens.shape
    V = logprobs.shape[-1]
    top, idx = torch.topk((logprobs.view(P, K, V) + b.score[:, :, None]).view(P, K * V), 2 * K)  # (P, 2K) best first
    # 1. done for good once the best hypothesis beats the best candidate even at the longest length (1187, 1341)
    b.done |= b.best_score >= top[:, 0].double() / length_norm(max_length - 1, alpha)
    src, tok = idx // V, idx % V
    ends = (tok == eos) | (lengths + t + 1 == max_length)[:, None]  # (P, 2K): [SEP], or the length limit (1202)
    tokens, lps = take(b.tokens, src), take(b.logprobs, src)  # (P, 2K, M)
    tokens[:, :, t] = tok.masked_fill(ends, eos)  # NB: at the limit [SEP] replaces the token, its log-prob stays
    lps[:, :, t] = logprobs.view(P, K * V).gather(1, idx)

    # 2. candidates are taken best first until K have not ended; every ended one met on the way finishes,
    # whatever its rank (1195-1211). NB: transformers lets only the top K finish, but with one hypothesis kept
    # the same one wins: the first ended candidate (the rest share its L with lower sums), seen iff rank < K.
    runs = (~ends).long()
    finish = (runs.cumsum(1) - runs < K) & ends & ~b.done[:, None]  # (P, 2K)
    # 3. L = lengths + t tokens precede the [SEP] (1204, 1320); only the best survives (n_hyp 1, early_stopping off)
    score = (top.double() / length_norm(lengths + t, alpha)[:, None]).masked_fill(~finish, float("-inf"))
    new, j = score.max(dim=1)  # (P,) the first best: the original adds best first, replaces only when better (1321)
    better = new > b.best_score
    rows = torch.arange(P, device=top.device)
    b.best = torch.where(better[:, None], tokens[rows, j], b.best)
    b.best_logprobs = torch.where(better[:, None], lps[rows, j], b.best_logprobs)
    b.best_sum = torch.where(better, top[rows, j], b.best_sum)
    b.best_score = torch.where(better, new, b.best_score)
    b.best_len = torch.where(better, t + 1, b.best_len)

    # 4. the first K candidates that did not end run on (at the limit every candidate ended: the prompt is done)
    keep = torch.sort(ends.to(torch.uint8), dim=1, stable=True).indices[:, :K]  # (P, K)
    b.tokens, b.logprobs, b.score = take(tokens, keep), take(lps, keep), take(top, keep)
    b.done |= lengths + t + 1 == max_length
    return (take(src, keep) + rows[:, None] * K).flatten()


@torch.no_grad()
def original_beam_search(model, pixel_values=None, input_ids=None, attention_mask=None, *, image=None,
                         prompts_per_image=None, num_beams: int = 4, length_penalty: float = 0.6,
                         max_length: int | None = None, eos_token_id: int | None = None,
                         use_cache: bool = True) -> Generation:
    """The original GIT's beam search: for each prompt its single best hypothesis, as a `Generation`.

    Inputs as `generate` takes them (pixels or `image`, prompts as a tensor or lists, [CLS] by default,
    prompts_per_image).
    `max_length`: most tokens per sequence, [CLS], prompt and [SEP] counted (the original's max_steps);
    default the model's text positions, 1024 for every published checkpoint, as the original's.
    NB: the stopping bound divides by the penalty at max_length: a larger one searches longer, even for
    the same short answer (it never changes the answer: no candidate's score can rise above that bound).
    `scores` is the normalised score (the original's "logprobs"), `logprob` the plain sum.

        g = original_beam_search(model, pixels)             # captions: [CLS] ... [SEP]
        g = original_beam_search(model, image=img, input_ids=[[101, *question_ids]])
    """
    if length_penalty <= 0:
        raise ValueError(f"length_penalty must be > 0, as the original asserts; got {length_penalty}")
    text, device = model.config.text, model.device
    max_length = text.max_positions if max_length is None else max_length
    o = GenerationOptions(max_new_tokens=1, num_beams=num_beams, eos_token_id=eos_token_id).resolve(text)
    ids, lengths, shown, image_of = request(model, pixel_values, image, input_ids, attention_mask, o,
                                            streaming=False, prompts_per_image=prompts_per_image)
    if not int(lengths.max()) < max_length <= text.max_positions + 1:  # the last token is never fed back
        raise ValueError(f"max_length counts [CLS] and the prompt: it must exceed the longest prompt "
                         f"({int(lengths.max())} tokens) and be at most {text.max_positions + 1} (the model's "
                         f"text positions + 1); got {max_length}")
    if image is None:
        image = model.encode_image(pixel_values)

    P, K = len(ids), num_beams
    R, N, S = P * K, image.shape[1], max_length - 1  # text slots: every token but the last, never fed back
    rows_len = lengths.repeat_interleave(K)  # (R,)
    dec = decoder(model, image, R, S, use_cache, image_of=image_of)
    b = OriginalBeams.start(P, K, max_length - int(lengths.min()), o.eos, device)
    logits = dec.prefill(ids.repeat_interleave(K, dim=0), rows_len)  # (R, V)
    for t in range(b.tokens.shape[-1]):
        src = original_step(b, logits.float().log_softmax(dim=-1), t, lengths, max_length, o.eos, length_penalty)
        if bool(b.done.all()):
            break
        dec.reorder(src)
        # a finished prompt's rows run on unread (the original pads them); keep them inside the slots
        logits = dec.decode_step(b.tokens[:, :, t].reshape(R), (rows_len + t).clamp(max=S - 1))
    n = int(b.best_len.max())
    sequences = torch.cat([shown.to(b.best.dtype), b.best[:, :n]], dim=1)
    return Generation(sequences, b.best_score.float(), b.best_sum, b.best_logprobs[:, :n], b.best_len)


ORIGINAL_OPTIONS = ("num_beams", "length_penalty", "max_length", "eos_token_id", "use_cache")


def original_generate(model, pixel_values=None, input_ids=None, attention_mask=None, *, image=None,
                      prompts_per_image=None, return_scores: bool = False, on_token=None, generator=None,
                      compat: str = "original", num_beams: int = 4, length_penalty: float = 0.6, **options):
    """`generate(..., compat="original")`: `original_beam_search` with the original's defaults (4 beams,
    length penalty 0.6, max_length the model's text positions). Ids (P, T + n), or with `return_scores` the
    `Generation`, whose `scores` is the original's normalised score.

    Only what the original can do: transformers' other options (sampling, max_new_tokens, several
    sequences, early_stopping, streaming) are refused here, not ignored. NB: with num_beams=1 this is still
    the original's search (2 candidates a step), greedy in practice."""
    unknown = sorted(set(options) - set(ORIGINAL_OPTIONS))
    if unknown or on_token is not None or generator is not None:
        unknown += ["on_token"] * (on_token is not None) + ["generator"] * (generator is not None)
        hint = " (the original bounds [CLS] + prompt + answer: max_length)" if "max_new_tokens" in unknown else ""
        raise ValueError(f"compat='original' runs the original GIT's beam search, which takes "
                         f"{', '.join(ORIGINAL_OPTIONS)}; not {', '.join(unknown)}{hint}")
    g = original_beam_search(model, pixel_values, input_ids, attention_mask, image=image,
                             prompts_per_image=prompts_per_image, num_beams=num_beams,
                             length_penalty=length_penalty, **options)
    return g if return_scores else g.sequences
