"""Beam bookkeeping (generate.beam_step) on toy log-probability tables: no model, exact expectations.

The toy "model" gives the log-probabilities of the next token as a function of the prompt and the
tokens so far. Token 2 is EOS. Parity with transformers on real checkpoints is in test_generate.py;
these tests pin the rules themselves: which hypotheses finish, how the length penalty ranks them,
when each `early_stopping` mode stops, and which cache rows the running beams come from.
"""

import itertools
import math

import pytest
import torch

from git_scratch.generation.beam import NEG, Beams, beam_step

EOS = 2


def random_lm(V: int, seed: int):
    """(prompt, prefix) -> (V,) log-probs, fixed pseudo-random per prefix."""

    def lm(p: int, prefix: tuple) -> torch.Tensor:
        key = seed * 1_000_003 + p * 10_007 + sum((t + 1) * 31**i for i, t in enumerate(prefix))
        return (2 * torch.randn(V, generator=torch.Generator().manual_seed(key))).log_softmax(-1)

    return lm


def by_step(*tables):
    """A toy LM whose log-probs depend on the prompt and the step only: tables[p][t] = [lp(a), lp(b), lp(EOS)]."""
    return lambda p, prefix: torch.tensor(tables[p][len(prefix)])


def run(lm, P, K, M, length_penalty=1.0, early_stopping=False):
    """The generation loop of generate.beam_search with `lm` in place of the model and cache."""
    b = Beams.start(P, K, M, fill=-1)
    for t in range(M):
        logprobs = torch.stack([lm(p, tuple(b.tokens[p, k, :t].tolist())) for p in range(P) for k in range(K)])
        before = b.tokens.clone()
        src = beam_step(b, logprobs, t, EOS, length_penalty, early_stopping)
        # the cache rows: running beam r continues the prefix of row src[r], always within its prompt
        assert (src // K == torch.arange(P * K) // K).all()
        assert torch.equal(b.tokens.flatten(0, 1)[:, :t], before.flatten(0, 1)[src, :t])
        if b.stop:
            break
    return b


def brute_force(lm, p, V, M, length_penalty):
    """Every sequence that ends in EOS or at M tokens, with its length-penalised score, best first."""
    out = []
    for n in range(1, M + 1):
        for seq in itertools.product(range(V), repeat=n):
            if EOS in seq[:-1] or (n < M and seq[-1] != EOS):
                continue
            s = sum(lm(p, seq[:i])[tok].double().item() for i, tok in enumerate(seq))
            out.append((s / n**length_penalty, seq))
    return sorted(out, reverse=True)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_enough_beams_find_the_exact_best_hypotheses(length_penalty, seed):
    """With K at least the number of candidates per step (2^t live prefixes x 3 tokens <= 12) nothing
    is pruned, and `early_stopping="never"` has a valid bound for every length penalty, so the K finished
    hypotheses must be the K best of all complete sequences. Scores: float32 sums of 3 terms vs float64,
    so 1e-5 is ~100x the rounding."""
    V, M, K, P = 3, 3, 12, 2
    lm = random_lm(V, seed)
    b = run(lm, P, K, M, length_penalty, early_stopping="never")
    assert b.done.all()
    for p in range(P):
        best = brute_force(lm, p, V, M, length_penalty)[:K]
        for k, (score, seq) in enumerate(best):
            n = int(b.done_len[p, k])
            assert tuple(b.done_tokens[p, k, :n].tolist()) == seq
            assert (b.done_tokens[p, k, n:] == -1).all()  # the fill value after the end
            assert abs(b.done_score[p, k].item() - score) < 1e-5
            assert abs(b.done_logprobs[p, k, :n].sum().item() / n**length_penalty - score) < 1e-5


# a: 0, b: 1, EOS: 2. [EOS] scores -1.0 (any penalty); [a, a, EOS] sums to -2.0: worse unpenalised, better
# once divided by 3**length_penalty (-0.67 at 1.0, -0.22 at 2.0).
SHORT_OR_LONG = [[-0.5, -5.0, -1.0], [-0.5, -5.5, -6.0], [-6.5, -7.0, -1.0]]


@pytest.mark.parametrize("length_penalty,expected", [(0.0, [EOS]), (1.0, [0, 0, EOS]), (2.0, [0, 0, EOS])])
def test_length_penalty_divides_by_generated_length(length_penalty, expected):
    b = run(by_step(SHORT_OR_LONG), P=1, K=2, M=3, length_penalty=length_penalty, early_stopping="never")
    n = int(b.done_len[0, 0])
    assert b.done_tokens[0, 0, :n].tolist() == expected
    assert math.isclose(b.done_score[0, 0].item(), {1: -1.0, 3: -2.0 / 3**length_penalty}[n], rel_tol=1e-6)


# [EOS] = -0.5 finishes at step 0, [a, EOS] = -0.7 / 2 at step 1: two hypotheses, enough for K = 2.
# [a, a, EOS] = -0.25 / 3 is the best, but only a search that goes on to step 2 finds it.
EARLY_OR_LATE = [[-0.1, -3.0, -0.5], [-0.1, -3.3, -0.6], [-4.0, -4.4, -0.05]]


@pytest.mark.parametrize("early_stopping,expected,steps", [
    (True, [0, EOS], 2),  # stops as soon as K hypotheses are finished
    (False, [0, 0, EOS], 3),  # goes on: the best running beam -0.2 / 2 beats the worst finished, -0.5
    ("never", [0, 0, EOS], 3),
])
def test_early_stopping_modes(early_stopping, expected, steps):
    lm = by_step(EARLY_OR_LATE)
    calls = []
    b = run(lambda p, prefix: calls.append(len(prefix)) or lm(p, prefix), P=1, K=2, M=3,
            early_stopping=early_stopping)
    n = int(b.done_len[0, 0])
    assert b.done_tokens[0, 0, :n].tolist() == expected
    assert max(calls) + 1 == steps


def test_heuristic_stops_when_no_running_beam_can_win():
    """early_stopping=False, no length penalty, K = 1: [EOS] (-0.1) finishes at step 0 and the only
    running beam [a] (-3.0) can only fall further, so the search stops after one step."""
    hopeless = [[-3.0, -4.0, -0.1], [-0.1, -0.2, -0.3], [-0.1, -0.2, -0.3]]
    b = run(by_step(hopeless), P=1, K=1, M=3, length_penalty=0.0, early_stopping=False)
    assert b.stop and b.done_len[0, 0] == 1 and b.done_tokens[0, 0, 0] == EOS
    assert (b.tokens[0, 0, 1:] == -1).all()  # the running beam never got a second token


def test_only_the_top_k_candidates_can_finish():
    """K = 1: [EOS] (-0.2) is the second best candidate at step 0, so it is a backup, not a hypothesis;
    the search ends at M = 2 with [a, a] although [EOS] would score better."""
    b = run(by_step([[-0.1, -3.0, -0.2], [-5.0, -5.5, -6.0]]), P=1, K=1, M=2, early_stopping="never")
    assert b.done_len[0, 0] == 2 and b.done_tokens[0, 0].tolist() == [0, 0]


def test_never_bounds_with_the_longest_length_when_the_penalty_is_positive():
    """K = 1, length_penalty 1: [EOS] (-0.3) finishes at step 0; the running [a] (-0.5) cannot beat it at
    length 1, so False stops, but "never" bounds it by -0.5 / M and goes on to find [a, EOS] (-0.52 / 2)."""
    table = [[-0.5, -3.0, -0.3], [-0.05, -3.0, -0.02], [-1.0, -1.0, -1.0]]
    stop = run(by_step(table), P=1, K=1, M=3, early_stopping=False)
    assert stop.done_tokens[0, 0, :1].tolist() == [EOS] and stop.done_len[0, 0] == 1
    never = run(by_step(table), P=1, K=1, M=3, early_stopping="never")
    assert never.done_tokens[0, 0, :2].tolist() == [0, EOS]


# prompt 1 never ends before M, so the search runs all M steps while prompt 0 is decided early
ENDLESS = [[-0.1, -0.25, -20.0]] * 3


def test_a_prompt_without_hope_takes_no_more_hypotheses():
    """Prompt 0, K = 1, length_penalty 2, early_stopping False: after [EOS] (-1.0) the running [a] (-1.2)
    looks hopeless at its length and prompt 0 closes for good. [a, EOS] (-1.21 / 4) and [a, a, a]
    (-2.4 / 9) would have won, but a closed prompt takes no more hypotheses, even when a longer
    running beam looks hopeful again (transformers' heuristic, kept as is)."""
    closed = [[-1.2, -5.0, -1.0], [-0.2, -4.0, -0.01], [-1.0, -1.5, -2.0]]
    b = run(by_step(closed, ENDLESS), P=2, K=1, M=3, length_penalty=2.0, early_stopping=False)
    assert not b.open[0] and b.done_len[1, 0] == 3  # prompt 1 kept the search running to M
    assert b.done_len[0, 0] == 1 and b.done_tokens[0, 0, 0] == EOS


def test_a_full_prompt_takes_no_more_hypotheses_with_early_stopping():
    """Prompt 0, K = 2, length_penalty 1: [EOS] (-0.9) and [a, EOS] (-0.95 / 2) fill both slots by step 1.
    The running [a, a] could still win and does (-0.91 / 3) without early stopping; with
    early_stopping=True a full prompt takes no more hypotheses."""
    full = [[-0.5, -5.0, -0.9], [-0.4, -5.0, -0.45], [-3.0, -3.0, -0.01]]
    late = run(by_step(full, ENDLESS), P=2, K=2, M=3, early_stopping=False)
    assert late.done_tokens[0, 0].tolist() == [0, 0, EOS]
    early = run(by_step(full, ENDLESS), P=2, K=2, M=3, early_stopping=True)
    assert early.done_tokens[0, 0, :2].tolist() == [0, EOS] and early.done_len[0, 0] == 2


def test_first_step_expands_only_the_first_beam():
    """All K beams start as copies of the prompt; the NEG start scores keep their copies out."""
    b = Beams.start(2, 3, 4, fill=0)
    assert b.score[:, 0].eq(0).all() and b.score[:, 1:].eq(NEG).all()
    logprobs = torch.randn(6, 5).log_softmax(-1)
    src = beam_step(b, logprobs, 0, EOS, 1.0, False)
    assert src.tolist() == [0, 0, 0, 3, 3, 3]
    assert len(set(b.tokens[0, :, 0].tolist())) == 3  # three different first tokens from the one prompt
