"""Answers from a fixed set of labels: `rank` scores every label, `trie` decodes under a token trie.

    image ─▶ encode_image (once) ─▶ prefill_image (its keys/values, once) ─┬─ rank: [prompt ; label ; SEP] rows,
                                                                           │  teacher-forced, read the log-probs
                                                                           └─ trie: greedy or beam decoding,
                                                                              only tokens that continue a label

A label is its tokenizer's word pieces, then [SEP] (eos): the score of a label is the summed log-probability
of all of them after the prompt ([CLS], or [CLS] + question: GIT's format, cli/batch.Runner.prompt). The
eos counts because generation would have to emit it to stop there: without it "red" would always beat
"red orange" (a prefix scores at least as high as anything it starts), whatever the image says.

`rank` is exact and costs one teacher-forced pass over every label (in chunks of rows that read the image's
shared keys/values, decoders.Cached); `trie` costs one decode step per token and suits sets too large to
rank, at the price of greedy (or beam) search errors. Both report the same score, the model's own summed
log-probability of the label (never renormalised over the trie's allowed tokens), so they are comparable.
Shapes: the legend in model.py (Bi images, K beams, R rows, M most new tokens, V vocabulary).
"""

from __future__ import annotations

import torch

from .beam import NEG, Beams, beam_step
from .cache import why_inexact
from .decoders import Cached, decoder

Ranked = list[list[tuple[int, float]]]  # per image: (label index, summed log-probability), best first


def label_ids(tokenizer, labels: list[str]) -> list[list[int]]:
    """Each label's word pieces (no [CLS], no [SEP]); ValueError naming the label for an empty one or two
    labels that tokenize alike (they would be one answer)."""
    out, seen = [], {}
    for i, label in enumerate(labels):
        ids = tokenizer.encode(label)[1:]  # encode gives [CLS] + pieces
        if not ids:
            raise ValueError(f"label {i + 1} ({label!r}) has no word pieces")
        if tuple(ids) in seen:
            raise ValueError(f"labels {seen[tuple(ids)] + 1} ({labels[seen[tuple(ids)]]!r}) and {i + 1} ({label!r}) "
                             "are the same word pieces")
        seen[tuple(ids)] = i
        out.append(ids)
    return out


def _inputs(model, pixel_values, image, prompt, labels) -> tuple[torch.Tensor, list[int], int]:
    """(image tokens (Bi, N, D), prompt ids, the most text positions a label needs), checked."""
    if (pixel_values is None) == (image is None):
        raise ValueError("give exactly one of pixel_values and image")
    if not labels or any(not ids for ids in labels):
        raise ValueError("labels: give at least one label, each at least one token")
    cfg = model.config.text
    prompt = [cfg.bos_id] if prompt is None else [int(t) for t in prompt]
    T = len(prompt) + max(len(ids) for ids in labels) + 1  # [prompt ; label ; SEP]
    if T - 1 > cfg.max_positions:  # the last token ([SEP]) is predicted, never fed
        raise ValueError(f"the prompt and the longest label need {T - 1} text positions; the model has "
                         f"{cfg.max_positions}")
    if image is None:
        image = model.encode_image(pixel_values.to(model.device, model.dtype))  # the one vision pass
    return image, prompt, T


@torch.no_grad()
def rank(model, labels: list[list[int]], pixel_values=None, *, image=None, prompt=None, rows: int = 64) -> torch.Tensor:
    """Summed log-probability (Bi, n_labels), float32, of every label (its ids, then [SEP]) after `prompt`
    (ids; None: [CLS]) for every image: pixel_values (Bi, 3, H, W) / (Bi, F, 3, H, W), or `image` tokens.

    [SEP] counts (module doc): it is what generation would have to emit to stop at the label, so a label
    that is a prefix of another never wins by being shorter.
    Every label is teacher-forced as one row [prompt ; label ; SEP] (right-padded), at most `rows` rows
    (image x label) per pass, all reading the images' keys/values computed once (Cached.prefill_image).

        scores = rank(model, [tok.encode(w)[1:] for w in ("red", "blue")], pixels)   # (Bi, 2)
    """
    image, prompt, T = _inputs(model, pixel_values, image, prompt, labels)
    Bi, N, P = image.shape[0], image.shape[1], len(prompt)
    eos, pad = model.config.text.eos_id, model.config.text.pad_id
    seqs = [prompt + ids + [eos] for ids in labels]
    mask = model.mask(N, T, device=image.device)
    C = max(1, min(len(seqs), rows // Bi))  # labels per pass; each pass has Bi * C rows
    stepped = not hasattr(model, "head")  # a model run elsewhere (an ONNX export): its decoder's steps give logits
    cached = None if stepped or why_inexact(mask, N) else Cached(model, image, Bi * C, mask)
    if cached is not None:
        cached.prefill_image()
    out = torch.empty(Bi, len(seqs))
    for s in range(0, len(seqs), C):
        chunk = seqs[s : s + C]
        chunk += [chunk[0]] * (C - len(chunk))  # the last pass keeps the cache's row count; extra rows unread
        ids = torch.full((C, T), pad, dtype=torch.long, device=image.device)
        for r, seq in enumerate(chunk):
            ids[r, : len(seq)] = torch.tensor(seq)
        ids = ids.repeat(Bi, 1)  # (Bi * C, T): image-major, as the cache's rows are
        if stepped:
            logits = _stepped(model, image, ids, P)  # (R, T - P, V)
        elif cached is not None:
            x = cached.hidden(ids, torch.zeros(len(ids), 1, dtype=torch.long, device=ids.device))  # (R, T, D)
            logits = model.head(x[:, P - 1 : T - 1])  # (R, T - P, V): predicting the label and its [SEP]
        else:  # a mask the cache cannot serve: the full forward per row (padding after a row's end is causal)
            logits = model(image=image.repeat_interleave(C, dim=0), input_ids=ids).logits[:, P - 1 : T - 1]
        lp = logits.float().log_softmax(dim=-1).gather(-1, ids[:, P:, None])[..., 0]  # (R, T - P)
        n = torch.tensor([len(q) - P for q in chunk], device=ids.device).repeat(Bi)  # label tokens + [SEP]
        lp = lp.masked_fill(torch.arange(T - P, device=ids.device) >= n[:, None], 0.0)
        out[:, s : s + C] = lp.sum(dim=-1).view(Bi, C)[:, : min(C, len(seqs) - s)].cpu()
    return out


def _stepped(model, image: torch.Tensor, ids: torch.Tensor, P: int) -> torch.Tensor:
    """Logits (R, T - P, V) predicting ids[:, P:] (R, T) after the prompt ids[:, :P], teacher-forced one token a
    step through the model's decoder (decoders.decoder): the route of a model with no `head` of its own."""
    R, T = ids.shape
    dec = decoder(model, image, R, T - 1)  # the last token ([SEP]) is only predicted, never fed
    lengths = torch.full((R,), P, device=ids.device)
    steps = [dec.prefill(ids[:, :P], lengths)]
    steps += [dec.decode_step(ids[:, t], lengths + (t - P)) for t in range(P, T - 1)]
    return torch.stack(steps, dim=1)


def best(scores: torch.Tensor, k: int) -> Ranked:
    """rank's scores (Bi, n) -> per image the k best (label index, score), best first (ties: lower index)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True)
    return [list(zip(i[:k].tolist(), s[:k].tolist())) for i, s in zip(order.indices, order.values)]


class Trie:
    """The labels as token sequences (each ending in [SEP]): which tokens may follow a prefix."""

    def __init__(self, labels: list[list[int]], eos: int):
        self.index = {tuple(ids) + (eos,): i for i, ids in enumerate(labels)}  # whole sequence -> label index
        self.next: dict[tuple, set] = {}
        for seq in self.index:
            for t in range(len(seq)):
                self.next.setdefault(seq[:t], set()).add(seq[t])
        self.depth = max(len(seq) for seq in self.index)  # the most tokens a label takes, [SEP] included

    def allowed(self, prefixes: list[tuple], V: int, device=None) -> torch.Tensor:
        """(R, V) bool: the tokens that continue each row's prefix into a label ([SEP] only after a whole
        one). A prefix that is no label's (a dead beam) allows nothing."""
        out = torch.zeros(len(prefixes), V, dtype=torch.bool)
        for r, prefix in enumerate(prefixes):
            out[r, list(self.next.get(prefix, ()))] = True
        return out.to(device)


@torch.no_grad()
def trie(model, labels: list[list[int]], pixel_values=None, *, image=None, prompt=None, num_beams: int = 1) -> Ranked:
    """Per image, the label(s) decoding finds when only label continuations are allowed, best first:
    one with num_beams == 1, up to num_beams with beam search. Scores as `rank` gives them.

    Greedy: at each step the argmax among the trie's allowed next tokens (argmax of the logits, of the
    log-probs or of their renormalisation over the allowed set: one token). Beam search (beam.beam_step,
    length penalty 0): beams ranked by the model's summed log-probabilities, with the disallowed tokens'
    set to -inf (as transformers' prefix-constrained beam search does), so a label's score is its `rank`
    score and beam search with num_beams >= the number of labels finds them all, ranked as `rank` ranks them.
    """
    image, prompt, _ = _inputs(model, pixel_values, image, prompt, labels)
    t = Trie(labels, model.config.text.eos_id)
    Bi, K, M, V = image.shape[0], num_beams, t.depth, model.config.text.vocab_size
    R = Bi * K
    ids = torch.tensor([prompt] * R, device=image.device)
    lengths = torch.full((R,), len(prompt), device=image.device)
    dec = decoder(model, image, R, len(prompt) + M - 1)  # the last token ([SEP]) is never fed back
    logits = dec.prefill(ids, lengths)
    if K == 1:
        return _greedy(dec, logits, t, lengths, M, V)
    b = Beams.start(Bi, K, M, model.config.text.eos_id, device=image.device)
    for step in range(M):
        prefixes = [()] * R if step == 0 else [tuple(row) for row in b.tokens[:, :, :step].reshape(R, step).tolist()]
        lp = logits.float().log_softmax(dim=-1).masked_fill(~t.allowed(prefixes, V, image.device), float("-inf"))
        src = beam_step(b, lp, step, model.config.text.eos_id, 0.0, False)
        if step + 1 == M or bool(b.stop):
            break
        dec.reorder(src)
        logits = dec.decode_step(b.tokens[:, :, step].reshape(R), lengths + step)
    out = []
    for p in range(Bi):
        found = []
        for j in range(K):  # finished hypotheses, best first; empty slots and the start's duplicate beams
            n = int(b.done_len[p, j])  # (scored about NEG) are not answers
            if bool(b.done[p, j]) and float(b.done_score[p, j]) > NEG / 2:
                found.append((t.index[tuple(b.done_tokens[p, j, :n].tolist())],
                              float(b.done_logprobs[p, j, :n].sum())))
        out.append(found)
    return out


def _greedy(dec, logits, t: Trie, lengths, M: int, V: int) -> Ranked:
    """Greedy decoding under the trie, every row to its label's [SEP] (at most M steps)."""
    R = len(lengths)
    prefixes, score = [()] * R, torch.zeros(R)
    for step in range(M):
        lp = logits.float().log_softmax(dim=-1)
        allowed = t.allowed(prefixes, V, lp.device)
        done = torch.tensor([p in t.index for p in prefixes])  # finished rows: nothing to choose
        allowed[done.to(lp.device)] = True
        tok = lp.masked_fill(~allowed, float("-inf")).argmax(dim=-1)
        score += lp.gather(1, tok[:, None])[:, 0].cpu().masked_fill(done, 0.0)
        prefixes = [p if d else p + (k,) for p, d, k in zip(prefixes, done.tolist(), tok.tolist())]
        if all(p in t.index for p in prefixes):
            break
        logits = dec.decode_step(tok, lengths + step)
    return [[(t.index[p], float(s))] for p, s in zip(prefixes, score.tolist())]
