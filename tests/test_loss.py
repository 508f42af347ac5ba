"""The two training losses (git_scratch/loss.py) against transformers and against direct computations,
and the original's (input_ids, need_predict) construction."""

import math

import pytest
import torch

from git_scratch.loss import SMOOTHING, hf_loss, original_loss
from git_scratch.preprocessing.truncation import MAX_TEXT_LEN, example_ids

CLS, SEP = 1, 2  # the tiny reference shape's bos/eos


def test_hf_loss_equals_transformers_loss(reference):
    r = reference("tiny")
    px, ids = r.pixels(3, seed=4), r.ids(3, 10, seed=4)
    labels = ids.clone()
    labels[1, 6:] = -100  # a padded row
    labels[2, :3] = -100  # a prompt excluded from the loss
    with torch.no_grad():
        ref = r.hf(pixel_values=px, input_ids=ids, labels=labels).loss
        ours = hf_loss(r.ours(px, ids).logits, labels)
    # Same weights, same float32 math in a different order (see test_parity.py): a few ulps of the loss.
    assert abs(ours.item() - ref.item()) <= 1e-6 * abs(ref.item())


def test_hf_loss_equals_direct_next_token_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 7), generator=g)
    labels[0, 4:] = -100
    terms = []
    for b in range(2):
        for t in range(6):  # position t predicts labels[t + 1]
            y = labels[b, t + 1].item()
            if y != -100:
                terms.append(-(logits[b, t, y] - torch.logsumexp(logits[b, t], 0)).item())
    direct = sum(terms) / len(terms)
    # hf_loss computes in float32: relative error of a float32 log-softmax, ~1e-7, well inside 1e-6.
    assert hf_loss(logits.float(), labels).item() == pytest.approx(direct, rel=1e-6)


def smoothed_kl_by_hand(logits, ids, need, eps):
    """The original's loss written out: per predicted token, the explicit smoothed target q and
    KL(q || p) = sum_v q_v (log q_v - log p_v), in float64; mean over predicted tokens."""
    B, T, V = logits.shape
    logits = logits.double()
    losses = []
    for b in range(B):
        for t in range(T - 1):
            if need[b, t + 1] != 1:
                continue
            logp = logits[b, t] - torch.logsumexp(logits[b, t], 0)
            q = [eps / (V - 1)] * V
            q[ids[b, t + 1].item()] = 1 - eps
            losses.append(sum(qv * (math.log(qv) - logp[v].item()) for v, qv in enumerate(q)))
    return sum(losses) / len(losses)


def test_original_loss_equals_explicit_smoothed_kl():
    g = torch.Generator().manual_seed(1)
    V = 13
    rows = [example_ids([5, 6, 7], [8, 9], CLS, SEP), example_ids([], [4, 10, 11, 12], CLS, SEP)]
    T = max(len(ids) for ids, _ in rows)
    ids = torch.zeros(2, T, dtype=torch.long)  # 0-padded, need_predict 0 on padding
    need = torch.zeros(2, T, dtype=torch.long)
    for b, (i, n) in enumerate(rows):
        ids[b, : len(i)], need[b, : len(n)] = torch.tensor(i), torch.tensor(n)
    logits = 3 * torch.randn(2, T, V, generator=g)
    expected = smoothed_kl_by_hand(logits, ids, need, SMOOTHING)
    # float32 log-softmax and sums over 13 classes against float64: ~1e-7 relative; 1e-5 leaves room,
    # while a wrong eps / (V - 1) (say eps / V) moves the loss by ~1e-3.
    assert original_loss(logits, ids, need).item() == pytest.approx(expected, rel=1e-5)


def test_original_loss_ignores_prompt_tokens():
    g = torch.Generator().manual_seed(2)
    ids, need = (torch.tensor([x]) for x in example_ids([5, 6, 7], [8], CLS, SEP))
    logits = torch.randn(1, ids.shape[1], 10, generator=g)
    changed = logits.clone()
    changed[0, :3] += 5 * torch.randn(3, 10, generator=g)  # the logits that predict the question's tokens
    assert original_loss(changed, ids, need).item() == original_loss(logits, ids, need).item()
    changed[0, 3, 8] += 1.0  # the true answer's logit where the answer is predicted
    assert original_loss(changed, ids, need).item() != original_loss(logits, ids, need).item()


def test_need_predict_covers_exactly_answer_and_sep():
    ids, need = example_ids([10, 11, 12], [20, 21], CLS, SEP)
    assert ids == [CLS, 10, 11, 12, 20, 21, SEP]
    assert [i for i, n in zip(ids, need) if n] == [20, 21, SEP]


def test_caption_predicts_every_token_and_sep():
    ids, need = example_ids([], [20, 21, 22], CLS, SEP)
    assert ids == [CLS, 20, 21, 22, SEP]
    assert need == [0, 1, 1, 1, 1]


def test_long_question_keeps_its_last_tokens():
    question, answer = list(range(100, 150)), [7, 8]  # 50 tokens: cut to their first 40, then 40 + 2 > 40
    ids, need = example_ids(question, answer, CLS, SEP)
    assert len(ids) == MAX_TEXT_LEN  # [CLS] + the last 38 of (question + answer) + [SEP]
    assert ids == [CLS] + question[4:40] + answer + [SEP]
    assert [i for i, n in zip(ids, need) if n] == answer + [SEP]


def test_forty_tokens_are_kept_whole():
    # The original truncates only above max_len, and then to max_len - 2: 40 tokens stay 40.
    question, answer = list(range(100, 138)), [7, 8]
    ids, _ = example_ids(question, answer, CLS, SEP)
    assert ids == [CLS] + question + answer + [SEP]


def test_long_caption_keeps_its_first_tokens():
    # Each part is first cut to its first 40 tokens (the tokenizer's truncation); 40 are then kept whole.
    caption = list(range(100, 150))
    ids, need = example_ids([], caption, CLS, SEP)
    assert ids == [CLS] + caption[:40] + [SEP]
    assert all(need[1:])


def test_original_loss_without_smoothing_is_hf_loss_over_the_same_tokens():
    # KL to a one-hot target is the cross-entropy: the two modes differ only by the smoothing.
    g = torch.Generator().manual_seed(3)
    ids, need = (torch.tensor([x]) for x in example_ids([5, 6], [7, 8, 9], CLS, SEP))
    logits = torch.randn(1, ids.shape[1], 12, generator=g)
    labels = ids.masked_fill(need == 0, -100)
    # same float32 log-softmax, summed differently: equal to a few ulps
    assert original_loss(logits, ids, need, eps=0.0).item() == pytest.approx(hf_loss(logits, labels).item(), rel=1e-6)
