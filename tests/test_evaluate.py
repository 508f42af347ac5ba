"""Evaluation (git_scratch/evaluate.py, `git-scratch eval`): groups, scores and COCO-style results."""

import json

import pytest
from PIL import Image

from git_scratch.cli.main import main
from git_scratch.data import shapes
from git_scratch.data.datasets import ShapesDataset, load_dataset
from git_scratch.evaluation.evaluate import evaluate, groups
from git_scratch.training.checkpoints import latest_checkpoint
from git_scratch.training.loop import TrainOptions, train

from _train_helpers import new_model, one_thread  # noqa: F401 (an autouse fixture)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    opts = TrainOptions(steps=2, batch_size=4, lr=1e-3, warmup=1, bf16="off", progress=False, save_every=2)
    train(new_model(), ShapesDataset(20, "both"), shapes.processor(), opts, out)
    return latest_checkpoint(out)


def test_groups_collect_every_reference_of_an_image(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "caption": "one"}, {"image": "a.png", "caption": "two"},
            {"image": "a.png", "question": "q?", "answer": "yes"}, {"image": "a.png", "question": "q?", "answer": "no"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = [(g.prompt, g.targets) for g in groups(load_dataset(tmp_path / "d.jsonl"))]
    assert got == [("", ["one", "two"]), ("q?", ["yes", "no"])]


def test_a_perfect_model_scores_perfectly(checkpoint, monkeypatch):
    """Generation replaced by the true captions and answers: every score at its maximum, so the wiring of
    groups, references and metrics is right."""
    import git_scratch.evaluation.evaluate as ev
    import git_scratch.load

    data = ShapesDataset(8, "both", offset=500)
    truth = {(g.image_id, g.prompt): g.targets[0] for g in groups(data)}

    def oracle(model, data, processor, todo, batch_size, progress=True, **options):
        return [truth[(g.image_id, g.prompt)] for g in todo]

    monkeypatch.setattr(ev, "generate_all", oracle)
    model = git_scratch.load(checkpoint)
    scores, results = evaluate(model, data, shapes.processor(), batch_size=4, progress=False)
    assert scores["bleu4"] == pytest.approx(1.0) and scores["rouge_l"] == 1.0
    assert scores["vqa_accuracy"] == 1.0 and scores["n"] == 4 and scores["n_questions"] == 4
    assert scores["distinct"] == len({truth[k] for k in truth if not k[1]})
    assert [r["image_id"] for r in results["captions"]] == [500, 502, 504, 506]


def test_cli_eval_writes_scores_and_results(checkpoint, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(["eval", "shapes", "-c", str(checkpoint), "--shapes-samples", "6", "--batch-size", "3",
                 "--max-new-tokens", "5", "--results", str(out), "--no-progress"])
    assert code == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"loss_hf", "loss_original", "bleu4", "cider_d", "rouge_l", "distinct", "vqa_accuracy"} <= set(scores)
    assert scores["n"] == 3 and scores["n_questions"] == 3
    results = json.loads(out.read_text())
    assert len(results["captions"]) == 3 and set(results["answers"][0]) == {"question_id", "image_id", "question",
                                                                            "answer"}


def test_unreadable_images_are_left_out_of_the_scores(checkpoint, tmp_path, capsys):
    Image.new("RGB", (96, 96), "red").save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    rows = [{"image": "a.png", "caption": "a small red square"}, {"image": "bad.png", "caption": "a large red cross"}]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", str(tmp_path / "val.jsonl"), "-c", str(checkpoint), "--max-new-tokens", "3",
                 "--no-progress"]) == 0
    io = capsys.readouterr()
    scores = json.loads(io.out.strip().splitlines()[-1])
    assert scores["n"] == 1 and scores["skipped"] == 1
    assert io.err.count("bad.png") == 1


def test_questions_of_different_lengths_get_their_answers_alone_and_one_image_encoding(tmp_path, monkeypatch):
    """The demo model, one picture asked four questions (5 to 8 tokens) in one batch, with its caption: each
    answer is what the model answers to that question alone (no question words left in it), and the picture
    is read and encoded once for all five."""
    import torch

    import git_scratch
    from git_scratch.evaluation.evaluate import generate_all
    from git_scratch.model import GIT

    image, caption, qa = shapes.sample(5)
    image.save(tmp_path / "a.png")
    picked = [qa[0], qa[1], qa[7], qa[11]]  # "how many shapes are there?", ..., "is there a red cross?"
    rows = [{"image": "a.png", "caption": caption}] + [{"image": "a.png", "question": q, "answer": a}
                                                        for q, a in picked]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data, model, proc = load_dataset(tmp_path / "d.jsonl"), git_scratch.load(shapes.CHECKPOINT), shapes.processor()
    todo = groups(data)
    assert len({len(proc.tokenizer.encode(g.prompt)) for g in todo}) >= 3  # mixed lengths in one batch
    encoded = []
    real = GIT.encode_image
    monkeypatch.setattr(GIT, "encode_image", lambda self, px: encoded.append(len(px)) or real(self, px))
    texts = generate_all(model, data, proc, todo, batch_size=8, progress=False, max_new_tokens=5)
    assert encoded == [1]
    pixels = torch.from_numpy(proc.pixel_values([image]))
    for g, text in zip(todo, texts):
        prompt = proc.tokenizer.encode(g.prompt) if g.prompt else [proc.tokenizer.cls_id]
        alone = model.generate(pixels, [prompt], max_new_tokens=5)[0, len(prompt):].tolist()
        assert text == proc.tokenizer.decode(alone).strip(), g.prompt
    assert texts[1:] == [a for _, a in picked]  # the demo model answers these right
