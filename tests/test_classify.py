"""Answers from a fixed set: `rank` and `trie` (generation/classify.py) and `git-scratch classify`."""

import itertools
import json
import random

import pytest
import torch

import git_scratch
from git_scratch import GIT, GitConfig, cli, init_weights
from git_scratch.data import shapes
from git_scratch.generation.classify import Trie, best, label_ids, rank, trie

DEMO = str(shapes.CHECKPOINT)
COLORS = list(shapes.COLORS)


def tiny(vocab: int = 99, seed: int = 0) -> GIT:
    cfg = GitConfig.preset("tiny")
    cfg.text.vocab_size = vocab
    return init_weights(GIT(cfg), std=0.1, generator=torch.Generator().manual_seed(seed)).eval()


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def score_alone(model, px, prompt, label) -> float:
    """One label's summed log-probability by a full forward of its own: [prompt ; label ; SEP]."""
    ids = torch.tensor([prompt + label + [model.config.text.eos_id]])
    lp = model(px[None], ids).logits[0, :-1].float().log_softmax(-1)  # row t predicts token t + 1
    return float(lp[len(prompt) - 1 :].gather(1, ids[0, len(prompt) :, None]).sum())


@pytest.mark.parametrize("prompt", [None, [1, 40, 41, 42]], ids=["caption", "question"])
def test_rank_equals_scoring_each_label_alone(prompt):
    model, px = tiny(), pixels(3)
    # lengths 1 to 4, a label that is a prefix of others: padding, and the [SEP] that a prefix must pay for
    labels = [[10], [10, 11], [10, 11, 12, 13], [20], [30, 31], [5, 6, 7], [10, 12]]
    # rows=4 over 3 images: one label per pass, so 7 passes reuse the one image prefill (and pad rows never leak)
    for rows in (4, 64):
        got = rank(model, labels, px, prompt=prompt, rows=rows)
        want = torch.tensor([[score_alone(model, px[i], prompt or [1], lab) for lab in labels] for i in range(3)])
        # float32 sums in another order (cached attention over shared image keys vs one full forward): ~1e-6
        # relative on scores of about -20; 1e-4 absolute is far below any gap that would change a ranking
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_rank_encodes_each_image_once():
    model, px, calls = tiny(), pixels(2), []
    handle = model.vision.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        rank(model, [[k] for k in range(5, 60)], px, rows=8)  # 55 labels, 14 passes
    finally:
        handle.remove()
    assert calls == [2]


def test_trie_only_ever_returns_labels_from_the_set():
    rng = random.Random(0)
    for seed in range(3):
        model, px = tiny(seed=seed), pixels(4, seed)
        # a random, irregular set: shared prefixes, prefixes that are labels themselves, lengths 1 to 5
        labels = list({tuple(rng.randrange(5, 99) if rng.random() < 0.5 else rng.randrange(5, 8)
                             for _ in range(rng.randint(1, 5))) for _ in range(30)})
        labels = [list(lab) for lab in labels]
        scores = rank(model, labels, px)
        for k in (1, 2, 5):
            found = trie(model, labels, px, num_beams=k)
            assert [len(f) for f in found] == [k] * 4  # 30 labels: every beam finishes one
            for i, pairs in enumerate(found):
                assert len({j for j, _ in pairs}) == k  # distinct labels
                for j, s in pairs:
                    assert 0 <= j < len(labels)
                    # the label really is that sequence: its score is rank's (same tolerance as above)
                    assert abs(s - float(scores[i, j])) < 1e-4


@torch.no_grad()
def greedy_consistent(model, px, labels, eos) -> list[int]:
    """Every label whose each token is the argmax, among the tokens the set allows after its prefix, of a
    full forward over that prefix: checked label by label, the whole set (no search)."""
    t = Trie(labels, eos)
    out = []
    for j, lab in enumerate(labels):
        seq = lab + [eos]
        ids = torch.tensor([[1] + seq[:-1]])
        logits = model(px[None], ids).logits[0]  # (len(seq), V): row s predicts seq[s]
        ok = True
        for s, tok in enumerate(seq):
            allowed = sorted(t.next[tuple(seq[:s])])
            if allowed[int(logits[s, allowed].argmax())] != tok:
                ok = False
                break
        if ok:
            out.append(j)
    return out


def test_trie_greedy_is_the_one_label_on_the_greedy_path_exhaustively():
    """Tiny vocabulary (8 tokens: [PAD] [CLS] [SEP] and five words): greedy under the trie means, at every step,
    the argmax among the allowed tokens. Checked against every label of the set for that rule."""
    eos = 2
    for seed in range(4):
        model, px = tiny(vocab=8, seed=seed), pixels(3, seed)
        words = (3, 4, 5, 6, 7)
        every = [list(s) for n in (1, 2, 3) for s in itertools.product(words, repeat=n)]  # 155 labels
        for labels in (every, random.Random(seed).sample(every, 40)):
            found = trie(model, labels, px)
            for i in range(3):
                on_path = greedy_consistent(model, px[i], labels, eos)
                assert len(on_path) == 1  # exactly one label (no ties in float32 logits of a random model)
                assert found[i][0][0] == on_path[0]


def test_trie_beam_with_a_beam_per_label_ranks_as_rank():
    """Beams scored by the model's own log-probabilities: with as many beams as labels none is dropped, so
    beam search returns every label, in rank's order, with rank's scores."""
    model, px = tiny(seed=1), pixels(2, 1)
    labels = [[10], [10, 11], [10, 11, 12], [20, 21], [30], [5, 6, 7, 8]]
    got = trie(model, labels, px, num_beams=len(labels))
    want = best(rank(model, labels, px), len(labels))
    for g, w in zip(got, want):
        assert [j for j, _ in g] == [j for j, _ in w]
        assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(g, w))  # tolerance: as in the rank test


# ---------------------------------------------------------------- the demo model
@pytest.fixture(scope="module")
def demo():
    return git_scratch.load(shapes.CHECKPOINT), git_scratch.Processor.from_pretrained(shapes.CHECKPOINT)


@torch.no_grad()
def test_classify_answers_colour_questions_as_often_as_vqa(demo):
    """On 150 held-out images, 'what color is the KIND?' answered by ranking the six colour names, against
    the answer greedy vqa generates: rank is right at least as often."""
    model, processor = demo
    tok = processor.tokenizer
    asked = {}  # question -> [(image index, truth)]
    seeds = range(shapes.VAL_OFFSET + 500, shapes.VAL_OFFSET + 650)
    images = [shapes.sample(s) for s in seeds]
    for i, (_, _, qa) in enumerate(images):
        for q, a in qa:
            if q.startswith("what color is the"):
                asked.setdefault(q, []).append((i, a))
    image = model.encode_image(torch.from_numpy(processor.pixel_values([im for im, _, _ in images])))
    labels = label_ids(tok, COLORS)
    right_rank = right_vqa = n = 0
    for q, rows in asked.items():
        idx = [i for i, _ in rows]
        prompt = tok.encode(q)
        ranked = best(rank(model, labels, image=image[idx], prompt=prompt), 1)
        said = model.generate(image=image[idx], input_ids=[prompt], max_new_tokens=4)[:, len(prompt) :]
        for (_, truth), r, s in zip(rows, ranked, said.tolist()):
            right_rank += COLORS[r[0][0]] == truth
            right_vqa += tok.decode(s).strip() == truth
            n += 1
    print(f"colour questions: {n}; rank {right_rank / n:.3f}, vqa {right_vqa / n:.3f}")
    assert n > 150  # about two colour questions per image
    # Measured: rank 0.995, vqa 0.995 (211 of 212 each). The same images asked about another kind of shape
    # ("what color is the cross?" where the truth is the circle's) rank right 0.566 of the time: the bar 0.97
    # fails a rank that read the wrong prompt or ignored the question, with room for two near-tie flips that
    # another CPU's float32 rounding could cause (hence also the 2 answers of slack against vqa).
    assert right_rank + 2 >= right_vqa and right_rank / n >= 0.97


# ---------------------------------------------------------------- the command line
@pytest.fixture()
def files(tmp_path):
    im = tmp_path / "one.png"
    shapes.sample(2 * 10**9 + 1)[0].save(im)  # "a large blue square" (see the --json test)
    labels = tmp_path / "colors.txt"
    labels.write_text("\n".join(COLORS) + "\n")
    return im, labels, tmp_path


def test_classify_json_fields(files, capsys):
    im, labels, _ = files
    assert shapes.sample(2 * 10**9 + 1)[1] == "a large blue square"
    code = cli.main(["classify", im, "--labels", labels, "-q", "what color is the square?", "-c", DEMO, "--json",
                     "--top-k", "2", "--device", "cpu"])
    rec = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(rec) == {"input", "file", "question", "text", "labels", "scores", "settings"}
    assert rec["question"] == "what color is the square?" and rec["labels"][0] == rec["text"] == "blue"
    assert len(rec["labels"]) == len(rec["scores"]) == 2 and rec["scores"][0] >= rec["scores"][1]
    assert {"checkpoint", "labels", "method", "top_k", "num_beams", "dtype"} <= set(rec["settings"])
    assert rec["settings"]["method"] == "rank" and rec["settings"]["top_k"] == 2


def test_classify_text_lines_and_a_bad_image_fails_alone(files, capsys):
    im, labels, tmp = files
    bad = tmp / "bad.png"
    bad.write_bytes(b"not a png")
    code = cli.main(["classify", im, bad, "--labels", labels, "-q", "what color is the square?", "-c", DEMO,
                     "--method", "trie", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines()[0].split("\t")[:3] == [str(im), "what color is the square?", "blue"]
    assert len(out.splitlines()) == 1  # trie, greedy: one label
    assert f"error: {bad}:" in err


@pytest.mark.parametrize("content, said", [
    (None, "No such file"),
    (b"", "no labels (it is empty)"),
    (b"\n  \n\t\n", "no labels (it is blank)"),
    (b"red\n\xff\xfeblue\n", "not UTF-8 text (byte 0xff at offset 4)"),
    (b"red\nblue\n red \n", "line 3 repeats the label 'red' of line 1"),
    (b"red\nRed\n", "are the same word pieces"),  # the tokenizer is uncased: one answer
    (b"red\n" + b"x " * 70 + b"\n", "text positions, the model has 64"),
])
def test_bad_label_files_are_one_usage_error(files, capsys, content, said):
    im, _, tmp = files
    labels = tmp / "labels.txt"
    if content is not None:
        labels.write_bytes(content)
    code = cli.main(["classify", im, "--labels", labels, "-c", DEMO, "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: --labels {labels}") and said in err, err


@pytest.mark.parametrize("flags, said", [
    (["--num-beams", "2"], "--num-beams is for --method trie"),
    (["--method", "trie", "--top-k", "3"], "--top-k 3 needs --num-beams 3"),
    (["--top-k", "7"], "has only 6 label(s)"),
    (["--top-k", "0"], "--top-k must be at least 1"),
    (["-q", " "], "--question must not be empty"),
])
def test_bad_options_are_one_usage_error(files, capsys, flags, said):
    im, labels, _ = files
    assert cli.main(["classify", im, "--labels", labels, "-c", DEMO, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err, err
