"""When the two sides' token ids differ: a real difference, or a near-tie that float32 rounding decides?

Two float32 implementations that sum in different orders can pick different tokens where two choices
score (almost) the same: greedy at a position where the two best tokens are closer than the rounding
error of their log-probabilities, beam search where two finished sequences are. Neither side is then
wrong, and no float32 code could promise the other side's ids. This tells the two cases apart.

For each differing row, both sequences are scored by teacher forcing, with the same image and prompt:
exactly (our model in float64, which agrees with transformers' float64 to ~1e-13; float64 rounding is
far below every gap that matters here) and by each side in float32. Compared: greedy, the two tokens
at the first position where the rows part; beam search, the two whole sequences' summed log-probs
(transformers' beam score is that sum over a length both rows share). The row is a near-tie when the
exact gap between the two choices is no larger than the float32 error of the scores themselves (the
largest |float32 - exact| of either side on either choice). Anything else is a real difference.
"""

from __future__ import annotations

import copy

import torch


def vision_against_exact(models: dict, inputs: dict, ours, theirs) -> tuple[bool, str]:
    """Vision features: each side's float32 error against our float64 encoder on the same pixels.

    The two sides sum in different orders, so they differ by about their own rounding error, which
    grows with depth and activation size (git-large at initializer_range 0.1: ~1e-4 relative on both
    sides). Comparing them with each other would call that noise a mismatch; instead ours passes when
    its error is within 2x transformers' own. A real bug would be orders of magnitude above.
    """
    exact = copy.deepcopy(models["ours"].vision).double()
    with torch.inference_mode():
        ref = exact(inputs["px"].double())
    del exact

    def err(x):
        return float((x.double() - ref).abs().max() / ref.abs().max())

    e_ours, e_theirs = err(ours), err(theirs)
    return e_ours <= 2 * e_theirs, f"rel err vs float64: ours {e_ours:.1e}, transformers {e_theirs:.1e}"


def rows(x) -> list[torch.Tensor]:
    return [r for t in (x if isinstance(x, list) else [x]) for r in t]


def token_logprobs(model, px: torch.Tensor, seqs: torch.Tensor, new: int) -> torch.Tensor:
    """(2, L) sequences -> (2, new) log-probabilities of their last `new` tokens given everything before."""
    with torch.inference_mode():
        logits = model(pixel_values=px, input_ids=seqs).logits[:, -seqs.shape[1] :]  # text positions (HF: all)
    lp = logits[:, -new - 1 : -1].double().log_softmax(dim=-1)
    return lp.gather(-1, seqs[:, -new:, None])[..., 0]


def explain(models: dict, inputs: dict, ours, theirs, new: int, beams: int) -> tuple[bool, str]:
    """-> (every differing row is a near-tie, a one-line account with the gaps and errors)."""
    a, b = rows(ours), rows(theirs)
    px = inputs["px"]
    n_img, n = px.shape[0], len(a)
    exact = copy.deepcopy(models["ours"]).double()
    ties, real = [], []
    for r, (x, y) in enumerate(zip(a, b)):
        if x.shape == y.shape and torch.equal(x, y):
            continue
        if x.shape != y.shape or not torch.equal(x[:-new], y[:-new]):
            real.append(f"row {r}: lengths or prompts differ")
            continue
        seqs = torch.stack([x, y])
        i = r * n_img // n  # rows are image-major
        p = px[i : i + 1].expand(2, *px.shape[1:])
        lp = {
            "exact": token_logprobs(exact, p.double(), seqs, new),
            "ours": token_logprobs(models["ours"], p, seqs, new).double(),
            "theirs": token_logprobs(models["theirs"], p, seqs, new).double(),
        }
        if beams > 1:  # whole sequences
            s = {k: v.sum(dim=1) for k, v in lp.items()}
        else:  # the first token where the rows part
            at = int((x[-new:] != y[-new:]).nonzero()[0])
            s = {k: v[:, at] for k, v in lp.items()}
        gap = float((s["exact"][0] - s["exact"][1]).abs())
        err = max(float((s[k] - s["exact"]).abs().max()) for k in ("ours", "theirs"))
        better = "ours" if s["exact"][0] > s["exact"][1] else "transformers'"
        text = f"row {r}: exact gap {gap:.1e} ≤ fp32 error {err:.1e}, {better} scores higher exactly"
        (ties if gap <= err else real).append(text if gap <= err else text.replace("≤", ">"))
    del exact
    if real:
        return False, f"token ids DIFFER in {len(real)} of {n} rows ({'; '.join(real)})"
    return True, f"{n - len(ties)} of {n} rows identical, {len(ties)} near-tie ({'; '.join(ties)})"
