"""The shipped demo model (git_scratch.data.shapes.CHECKPOINT) and `git-scratch demo`."""

import json

import pytest
from PIL import Image

import git_scratch
from git_scratch import cli
from git_scratch.evaluation import demo
from git_scratch.data import shapes

# A fixed set of held-out seeds (never seen in training, which drew seeds below 1e7): 60 images, about
# 500 questions. The README's numbers come from 1,000 images; these are a quick, fixed check of the same
# checkpoint, so they hold or fail the same way on every run.
SEEDS = range(demo.FRESH, demo.FRESH + 60)


@pytest.fixture(scope="module")
def shipped():
    return git_scratch.load(shapes.CHECKPOINT), git_scratch.Processor.from_pretrained(shapes.CHECKPOINT)


def test_shipped_checkpoint_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in shapes.CHECKPOINT.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= set(files)
    assert sum(files.values()) < 8 * 2**20  # "a few MB at most": it ships inside the package


def test_shipped_model_captions_and_answers_held_out_images(shipped):
    model, processor = shipped
    s = demo.score(demo.predict(model, processor, SEEDS))
    assert s["n_captions"] == 60 and s["n_answers"] > 400
    # Measured on these seeds: captions 60 of 60 (1.0), answers 453 of 466 (0.972); on 1,000 held-out images
    # 0.994 and 0.970 (README). Generation is deterministic, but another CPU kind rounds float32 sums in another
    # order (oneDNN on AVX-512, MKL elsewhere) and can flip a near-tie token: the bounds leave room for 3 such
    # captions and 10 answers, and still fail at once on an earlier checkpoint (after 20,000 steps, before the
    # "left of" focus: 1.0 and 0.921 here; after 8,000: 0.85 and 0.852).
    assert s["captions"] >= 0.95, s
    assert s["answers"] >= 0.95, s


def test_shipped_model_reads_the_image(shipped, monkeypatch):
    """Shown another seed's image, the model must get nearly every caption wrong: it is not reciting a
    likely caption but describing the pixels."""
    model, processor = shipped
    sample = shapes.sample

    def wrong_image(seed):
        _, caption, qa = sample(seed)
        return sample(seed + 10_000)[0], caption, qa

    monkeypatch.setattr(demo.shapes, "sample", wrong_image)
    s = demo.score(demo.predict(model, processor, SEEDS))
    assert s["captions"] <= 0.1, s  # a chance match needs every shape's size, colour and kind to agree


def test_demo_json_has_one_line_per_caption_and_question(capsys):
    assert cli.main(["demo", "--seed", "123", "--n", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = [(s, None, shapes.sample(s)[1]) for s in (123, 124)]
    expected = [x for s, _, c in expected for x in [(s, None, c)] + [(s, q, a) for q, a in shapes.sample(s)[2]]]
    assert [(r["seed"], r["question"], r["truth"]) for r in rows] == expected
    assert all(set(r) >= {"seed", "question", "text", "truth"} and isinstance(r["text"], str) for r in rows)


def test_demo_writes_a_contact_sheet(tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert cli.main(["demo", "--seed", "7", "--n", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"contact sheet: {out.resolve()}" in printed
    assert printed.count("seed ") == 3  # one line per caption
    im = Image.open(out)
    assert im.width > 2 * shapes.SIZE and im.height > 3 * 2 * shapes.SIZE


def test_demo_refuses_a_bad_count(capsys):
    assert cli.main(["demo", "--n", "0"]) == 2
    assert capsys.readouterr().err == "error: --n must be at least 1, got 0\n"


def test_demo_names_a_checkpoint_without_a_tokenizer(tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "no-tokenizer"
    shutil.copytree(shapes.CHECKPOINT, ckpt, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    assert cli.main(["demo", "-c", str(ckpt), "--n", "1"]) == 2
    assert capsys.readouterr().err == (f"error: cannot load checkpoint: {ckpt}: no tokenizer.json or vocab.txt, so ids "
                                       "cannot become text\n")
