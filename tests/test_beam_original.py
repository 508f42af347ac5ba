"""The original GIT's beam search (git_scratch.generation.original) against two references written here:

- `plain_original`: the original's rules (GenerativeImage2Text @ faae4fb, layers/decoder.py:1083-1341) for one
  image and one prompt, written out plainly: Python lists and floats, a float32 running sum, and the model's
  full forward (no cache) over the whole sequence at every step. It pins what only a pruned search shows:
  which K beams run on, and the step at which the max-length bound stops the search (model calls counted).
- `every_sequence`: with enough beams nothing is pruned, so the search must return the best of *every*
  sequence it could return, ranked by the original's score: this pins the score, L and the length limit.

Every expected output is computed from `reference_pixels(px)`, the identity: patch it to add 0.5 and the
comparisons must fail (test_the_references_see_the_image does that).
"""

import itertools
import sys

import pytest
import torch

from git_scratch import GIT, GitConfig, init_weights
from git_scratch.generation.decoders import Cached
from git_scratch.generation.original import original_beam_search

EOS, ALPHA = 2, 0.6
# Scores: the same float32 log-probs through the cache and through the full forward differ by a few ulps
# per token (< 1e-6 for these sizes, test_architecture.py); sums of <= 12 of them stay below 1e-5, while a
# wrong token or a wrong L moves a score by 1e-2 or more.
TOL = 1e-5


def reference_pixels(px: torch.Tensor) -> torch.Tensor:
    return px


def tiny(vocab: int = 99, seed: int = 0, eos_bias: float = 0.0) -> GIT:
    """The tiny test shape at random init (std 0.1 so the words depend on the image), EOS made likelier."""
    cfg = GitConfig.preset("tiny")
    cfg.text.vocab_size = vocab
    model = init_weights(GIT(cfg), std=0.1, generator=torch.Generator().manual_seed(seed)).eval()
    with torch.no_grad():
        model.lm_head.bias[EOS] += eos_bias
    return model


def pixels(model: GIT, n: int, seed: int = 0) -> torch.Tensor:
    size = model.config.vision.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def norm(L: int) -> float:
    return (5 + L) ** ALPHA / (5 + 1) ** ALPHA  # decoder.py:1313


@torch.no_grad()
def next_logprobs(model, px, seqs: list[list[int]]) -> torch.Tensor:
    """Full forward over whole sequences (one image) -> each one's next-token log-probs (len(seqs), V)."""
    px = reference_pixels(px)[None].expand(len(seqs), -1, -1, -1)
    return model(pixel_values=px, input_ids=torch.tensor(seqs)).logits[:, -1].float().log_softmax(-1)


def plain_original(model, px, prompt: list[int], K: int, max_length: int):
    """-> (ids: prompt, new tokens, [SEP]; score; summed log-prob; steps, i.e. model calls)."""
    f32 = lambda x: torch.tensor(x, dtype=torch.float32)
    beams = [(0.0, list(prompt))] + [(-1e9, list(prompt))] * (K - 1)  # (float32 sum, tokens)
    best, steps, cur = None, 0, len(prompt)  # best: (score, sum, tokens before [SEP]); cur: tokens so far
    while cur < max_length:
        lp = next_logprobs(model, px, [seq for _, seq in beams])
        steps += 1
        sums = (f32([s for s, _ in beams])[:, None] + lp).flatten().tolist()  # float32 sums, as Python floats
        V = lp.shape[1]
        cands = sorted(range(len(sums)), key=lambda i: -sums[i])[: 2 * K]
        if best is not None and best[0] >= sums[cands[0]] / norm(max_length - 1):
            break  # no candidate can win, even at the longest length
        running = []
        for i in cands:
            s, seq, w = sums[i], beams[i // V][1], i % V
            if w == EOS or cur + 1 == max_length:  # finished: the tokens so far, then [SEP] (w dropped)
                if best is None or s / norm(cur) > best[0]:
                    best = (s / norm(cur), s, seq)
            else:
                running.append((s, seq + [w]))
            if len(running) == K:
                break
        beams, cur = running, cur + 1
    return best[2] + [EOS], best[0], best[1], steps


def every_sequence(model, px, prompt: list[int], max_length: int):
    """Best of every sequence the search can return -> (ids, score, sum): n <= m = max_length - T new tokens,
    ending in [SEP], or n = m, the last one (its log-prob counted) replaced by [SEP]."""
    T, V = len(prompt), model.config.text.vocab_size
    m = max_length - T
    full = [list(x) for x in itertools.product(range(V), repeat=m)]
    with torch.no_grad():
        px = reference_pixels(px)[None].expand(len(full), -1, -1, -1)
        lp = model(pixel_values=px, input_ids=torch.tensor([prompt + x for x in full])).logits.float().log_softmax(-1)
    token_lp = lp[:, T - 1 : T - 1 + m].gather(2, torch.tensor(full)[:, :, None])[:, :, 0]  # (V^m, m)
    out = []
    for row, x in enumerate(full):
        n = next((i + 1 for i, w in enumerate(x) if w == EOS), m)  # the first [SEP] ends it; else the limit
        if all(w == 0 for w in x[n:]):  # one representative per sequence: zeros after its end
            s = token_lp[row, :n].sum().item()
            out.append((s / norm(T + n - 1), s, prompt + x[: n - 1] + [EOS]))
    score, s, ids = max(out)
    return ids, score, s


def count_steps(monkeypatch) -> list:
    calls = []
    for stage in ("prefill", "decode_step"):  # one model call each
        run = getattr(Cached, stage)
        monkeypatch.setattr(Cached, stage, lambda self, *a, run=run: calls.append(1) or run(self, *a))
    return calls


# ---------------------------------------------------------------- against the original's rules
@pytest.mark.parametrize("eos_bias,ends", [(-4.0, "at the limit"), (2.5, "by [SEP]")])
@pytest.mark.parametrize("prompt", [[1], [1, 3, 0, 3]], ids=["caption", "question"])
def test_every_sequence_ranks_as_the_search_does(prompt, eos_bias, ends, monkeypatch):
    """V = 4 and m = 3 new tokens: 3 non-[SEP] tokens give at most 3 x 3 live prefixes, so K = 10 beams see
    every candidate and prune nothing (K = 9 could leave the worst [w, SEP] unseen: candidates are taken
    only until K run on). Whatever ends it, the search returns the best of all sequences."""
    model = tiny(vocab=4, eos_bias=eos_bias)
    px = pixels(model, 3)
    steps = count_steps(monkeypatch)
    max_length = len(prompt) + 3
    g = model.generate(px, [prompt], num_beams=10, max_length=max_length, compat="original", return_scores=True)
    assert len(steps) == 3 if ends == "at the limit" else len(steps) < 3  # [SEP]: stopped early, by the bound
    for i in range(3):
        ids, score, s = every_sequence(model, px[i], prompt, max_length)
        assert g.sequences[i, : len(ids)].tolist() == ids and g.sequences[i, len(ids) :].eq(EOS).all()
        assert abs(g.scores[i].item() - score) < TOL and abs(g.logprob[i].item() - s) < TOL
        assert (len(ids) == max_length) == (ends == "at the limit")


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("eos_bias", [0.0, 0.5, 0.8])
@pytest.mark.parametrize("seed", [0, 1])
def test_beams_pick_what_the_original_picks(seed, eos_bias, use_cache):
    """K = 4 on the 99-word vocabulary: pruning to K beams and the stopping bound at work (answers
    of 1 to 11 new tokens; 10 of the 24 reach max_length, the rest stop 3 to 8 steps before it). A batch of
    images with prompts of different lengths; each row equals its image and prompt searched alone."""
    model = tiny(seed=seed, eos_bias=eos_bias)
    px = pixels(model, 4, seed)
    prompts = [[1], [1, 17, 40, 5], [1, 9], [1, 30, 31, 32, 33, 34]]
    g = original_beam_search(model, px, prompts, max_length=12, use_cache=use_cache)
    T = max(map(len, prompts))
    for i, p in enumerate(prompts):
        ids, score, s, _ = plain_original(model, px[i], p, K=4, max_length=12)
        row = g.sequences[i, T - len(p) :].tolist()  # the prompt left-padded as given, then the new tokens
        assert row[: len(ids)] == ids and all(w == EOS for w in row[len(ids) :])
        assert g.lengths[i] == len(ids) - len(p)
        assert abs(g.scores[i].item() - score) < TOL and abs(g.logprob[i].item() - s) < TOL
        assert abs(g.token_logprobs[i].sum().item() - s) < TOL


def test_the_length_limit_drops_the_last_token_and_keeps_its_logprob():
    """EOS made unlikely: every image's answer reaches max_length. Its last new token is [SEP], but the
    log-prob counted there is that of the token the search chose (the best extension of the best beam,
    hence the argmax at that position), not [SEP]'s."""
    model = tiny(eos_bias=-6.0)
    px = pixels(model, 3)
    g = original_beam_search(model, px, max_length=8)
    assert g.sequences.shape == (3, 8) and g.sequences[:, -1].eq(EOS).all() and g.lengths.eq(7).all()
    for i in range(3):
        seq = g.sequences[i].tolist()
        lp = next_logprobs(model, px[i], [seq[:-1]])[0]
        assert abs(g.token_logprobs[i, -1].item() - lp.max().item()) < TOL
        assert lp.max() - lp[EOS] > 1.0  # [SEP]'s own log-prob would be far off
        assert abs(g.scores[i].item() - g.logprob[i].item() / norm(7)) < TOL  # L = 7: [CLS] + 6 kept tokens
        ids, score, s, steps = plain_original(model, px[i], [1], K=4, max_length=8)
        assert seq == ids and steps == 7


def test_the_bound_is_at_the_maximum_length(monkeypatch):
    """A three-word caption: at max_length 10 the search stops after 6 of its 9 possible steps, exactly when
    the original's bound says; at 40 the bound is looser and the same answer takes 11 steps."""
    model = tiny(eos_bias=0.8)
    px = pixels(model, 1, seed=0)
    found = {}
    for max_length in (10, 40):
        steps = count_steps(monkeypatch)
        g = original_beam_search(model, px, max_length=max_length)
        ids, score, s, ref_steps = plain_original(model, px[0], [1], K=4, max_length=max_length)
        assert g.sequences[0].tolist() == ids and abs(g.scores[0].item() - score) < TOL
        assert len(steps) == ref_steps < max_length - 1  # stopped early, by the bound
        found[max_length] = (ids, ref_steps)
    assert found[10] == ([1, 73, 88, 38, EOS], 6) and found[40] == ([1, 73, 88, 38, EOS], 11)


def test_L_counts_the_cls_token_and_the_prompt():
    """score = sum / ((5 + L) / 6) ** 0.6 with L = every token before [SEP]: a 6-token question (the
    [CLS] included) makes the divisor that of L = 6 + new tokens - 1, not of the new tokens alone."""
    model = tiny(eos_bias=0.5)
    px = pixels(model, 3)
    question = [1, 30, 31, 32, 33, 34]
    for prompt in ([1], question):  # answers of 9 to 29 new tokens, ended by [SEP] or by the limit
        g = original_beam_search(model, px, [prompt], max_length=30)
        for i in range(3):
            n = int(g.lengths[i])
            assert abs(g.scores[i].item() - g.logprob[i].item() / norm(len(prompt) + n - 1)) < TOL
            if len(prompt) > 1:  # the penalty without the prompt would be visibly different
                assert abs(g.scores[i].item() - g.logprob[i].item() / norm(n - 1)) > 1e-2


# ---------------------------------------------------------------- not transformers' beam search
def test_differs_from_transformers_beam_search():
    """A constructed model whose every next-token distribution is the same: P([SEP]) = e^-1, word 3 the
    rest. transformers' rules (generate, num_beams 4, length_penalty 0.6, 6 new tokens) divide a sum by
    n ** 0.6, n = new tokens, and score a beam that reaches the limit with no [SEP] at all:
        [SEP] -1.0,  [3, SEP] -1.459 / 2 ** 0.6 = -0.963,  [3] * 6 -2.754 / 6 ** 0.6 = -0.940: six words.
    The original divides by ((5 + L) / 6) ** 0.6, L counting [CLS], far gentler on short answers, and at
    the limit pays the sixth token and [SEP] in its place, L = 6:
        [SEP] -1.0 / 1 = -1.0,  [3, SEP] -1.459 / (7/6) ** 0.6 = -1.330,  [3] * 5 [SEP] -2.754 / (11/6) ** 0.6 = -1.914
    so it returns the empty caption, and stops at its 4th model call, whose best candidate [3, 3, 3, 3]
    can no longer win: -1.0 >= -1.836 / (11/6) ** 0.6 = -1.276 (at the third, -1.0 < -1.377 / 1.439 = -0.957)."""
    model = tiny(vocab=4)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.copy_(torch.tensor([-30.0, -30.0, 0.0, 0.0]))
        model.lm_head.bias[3] = torch.log(1 - torch.exp(torch.tensor(-1.0))) + 1.0  # log(p3 / p[SEP])
    px = pixels(model, 1)
    hf_style = model.generate(px, num_beams=4, length_penalty=0.6, max_new_tokens=6, return_scores=True)
    assert hf_style.sequences[0].tolist() == [1, 3, 3, 3, 3, 3, 3]
    # 1e-3: -0.4587 is log(1 - 1/e) written to 4 digits (up to 5e-5 a token, 3e-4 over 6 tokens / 6**0.6 = 1e-4)
    assert abs(hf_style.scores[0].item() - 6 * -0.4587 / 6**0.6) < 1e-3
    original = original_beam_search(model, px, max_length=7)
    # log P([SEP]) = -1 exactly by construction; 1e-4 is float32 log_softmax rounding with room to spare
    assert original.sequences[0].tolist() == [1, EOS] and abs(original.scores[0].item() + 1.0) < 1e-4
    assert plain_original(model, px[0], [1], K=4, max_length=7)[3] == 4


def test_the_references_see_the_image(monkeypatch):
    """The blindness check, automated: references computed from pixels offset by 0.5 disagree."""
    model = tiny(eos_bias=1.5)
    px = pixels(model, 4)
    g = original_beam_search(model, px, max_length=10)
    monkeypatch.setattr(sys.modules[__name__], "reference_pixels", lambda p: p + 0.5)
    moved = [plain_original(model, px[i], [1], K=4, max_length=10) for i in range(4)]
    assert any(abs(g.scores[i].item() - m[1]) > 1e-2 for i, m in enumerate(moved))


def test_refuses_what_the_original_cannot_do():
    model = tiny()
    px = pixels(model, 1)
    with pytest.raises(ValueError, match="max_length counts"):
        original_beam_search(model, px, [[1, 5, 6]], max_length=3)
    with pytest.raises(ValueError, match="at most 65"):
        original_beam_search(model, px, max_length=66)
    with pytest.raises(ValueError, match="length_penalty"):
        original_beam_search(model, px, length_penalty=0.0)


def test_compat_original_takes_the_originals_defaults_and_refuses_the_rest():
    """generate(compat="original") is the original's search with its settings (4 beams, penalty 0.6, max_length
    the text positions); transformers' options it has no form for are an error, never silently dropped."""
    model = tiny(eos_bias=0.5)
    px = pixels(model, 2, seed=3)
    g = model.generate(px, compat="original", return_scores=True)
    ref = plain_original(model, px[0], [1], K=4, max_length=model.config.text.max_positions)
    assert g.sequences[0, : len(ref[0])].tolist() == ref[0] and abs(g.scores[0].item() - ref[1]) < TOL
    assert torch.equal(model.generate(px, compat="original"), g.sequences)
    for bad, word in [(dict(max_new_tokens=5), "max_length"), (dict(do_sample=True), "do_sample"),
                      (dict(num_return_sequences=2), "num_return_sequences"), (dict(on_token=print), "on_token")]:
        with pytest.raises(ValueError, match=f"compat='original' runs the original GIT's beam search.*{word}"):
            model.generate(px, compat="original", **bad)
    with pytest.raises(ValueError, match="compat must be one of 'transformers', 'original', got 'orignal'"):
        model.generate(px, compat="orignal")
