"""Training's examples (training/feed.py): each depends on its stream position alone, so worker processes
reading ahead change nothing but the speed: the same batches, losses, weights and resume for 0 or 2 workers,
skipped images included."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from _train_helpers import new_model, one_thread  # noqa: F401 (an autouse fixture)
from git_scratch.data import shapes
from git_scratch.data.datasets import ShapesDataset, load_dataset
from git_scratch.training.feed import Examples, Feed
from git_scratch.training.loop import TrainOptions, train

OPTS = TrainOptions(steps=10, batch_size=4, accum=1, lr=1e-3, warmup=1, save_every=5, log_every=1, bf16="off",
                    progress=False)


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """train.jsonl: 12 shapes rows (captions and questions), rows 3 and 8 with an image that cannot be read."""
    root = tmp_path_factory.mktemp("feed")
    rows = []
    for seed in range(12):
        image, caption, qa = shapes.sample(seed)
        path = root / f"{seed}.png"
        if seed in (3, 8):
            path.write_bytes(b"not an image")
        else:
            image.save(path)
        rows.append({"image": path.name, "caption": caption} if seed % 2 else
                    {"image": path.name, "question": qa[0][0], "answer": qa[0][1]})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "train.jsonl"


def test_an_example_depends_only_on_its_position():
    examples = Examples(ShapesDataset(20, "both"), shapes.processor(), seed=3, augment=True, size=96)
    forward = [examples[p] for p in range(25)]  # past an epoch: a new permutation
    backward = [examples[p] for p in reversed(range(25))][::-1]
    for (p, a, _), (q, b, _) in zip(forward, backward):
        assert p == q and (a[0] == b[0]).all() and a[1:] == b[1:]
    assert not (examples[0][1][0] == examples[20][1][0]).all()  # another epoch, another example or crop


@pytest.mark.parametrize("source", ["shapes", "a file with unreadable images"])
def test_two_workers_train_exactly_as_the_training_process_alone(tmp_path, files, capsys, source):
    data = (lambda: ShapesDataset(40, "both")) if source == "shapes" else (lambda: load_dataset(files))
    runs = {}
    for workers in (0, 2):
        model, d = new_model(), data()
        capsys.readouterr()
        train(model, d, shapes.processor(), replace(OPTS, workers=workers), tmp_path / f"w{workers}")
        skips = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped")]
        runs[workers] = (losses(tmp_path / f"w{workers}"), weights(model), len(d.skipped), skips)
    (l0, w0, n0, s0), (l2, w2, n2, s2) = runs[0], runs[2]
    assert l0 == l2 and len(l0) == 10  # to the bit
    assert all(torch.equal(w0[k], w2[k]) for k in w0)
    assert n0 == n2 and s0 == s2  # each unreadable row counted and said once, by the training process
    if source != "shapes":
        assert n0 == 2 and len(s0) == 2


def test_a_run_resumed_under_workers_equals_an_uninterrupted_one(tmp_path, files):
    one = new_model()
    train(one, load_dataset(files), shapes.processor(), OPTS, tmp_path / "one")
    two = new_model()
    opts = replace(OPTS, workers=2)
    train(two, load_dataset(files), shapes.processor(), opts, tmp_path / "two", stop_at=5)
    two = new_model(seed=1)  # other weights: the resume must restore them all
    train(two, load_dataset(files), shapes.processor(), opts, tmp_path / "two", resume=True)
    assert losses(tmp_path / "one") == losses(tmp_path / "two")
    assert all(torch.equal(a, b) for a, b in zip(weights(one).values(), weights(two).values()))


def test_a_feed_with_a_worker_reaches_the_same_position_with_the_same_examples(files):
    def draw(workers):
        feed = Feed(load_dataset(files), shapes.processor(), seed=0, augment=True, size=96, k=4, workers=workers)
        try:
            shares = [feed.next_share() for _ in range(4)]  # 16 readable examples: past the first epoch
        finally:
            feed.close()
        return feed.position, shares

    (p0, s0), (p1, s1) = draw(0), draw(1)
    assert p0 == p1 and p0 > 16  # the two unreadable rows were passed over, in both
    for a, b in zip(sum(s0, []), sum(s1, [])):
        assert (a[0] == b[0]).all() and a[1:] == b[1:]
