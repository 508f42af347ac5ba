"""torchrun: `git-scratch train` and `git-scratch caption` in 2 real processes (gloo, CPU) against 1.

Every test launches `python -m torch.distributed.run --nproc_per_node=2 --standalone -m git_scratch.cli`
and compares with the same command in this process. Training runs shapes-tiny on a small JSONL dataset
built to be awkward: captions and short answers (so the ranks hold different token counts), non-square
images (so a crop takes a varying number of random draws) and two unreadable images (so a miss moves the
ranks' slices).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from _cli_helpers import cli_env, records, in_process
from _train_helpers import one_thread  # noqa: F401 (an autouse fixture)
from git_scratch.cli.main import main
from git_scratch.data import shapes

BAD = (3, 7)  # rows whose image file does not decode
TRAIN = ("--preset", "shapes-tiny", "--tokenizer", shapes.VOCAB_DIR, "--batch-size", "4", "--accum", "2",
         "--lr", "1e-3", "--warmup", "10", "--save-every", "2", "--log-every", "1", "--bf16", "off",
         "--no-progress")  # warm-up past the last step: the lr schedule does not depend on --steps
# Parameters after 4 steps, 2 ranks against 1 process: measured max |difference| 3.3e-7 (weights up to
# ~1), from float32 rounding: each rank's forward runs half the batch, and the gradient and loss are
# summed in another order. Adam passes such rounding on relative to each gradient, so it stays ~1e-7.
# Averaging the ranks' mean losses instead of weighing them by their token counts gives 1.8e-3 on the
# same run, so 1e-5 leaves 30x room for other CPUs' kernels and still fails that mistake 180x over.
PARAM_TOL = 1e-5
LOSS_RTOL = 1e-6  # the logged losses: measured 1e-8 relative apart; 3e-3 with the unweighted mean


def torchrun(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "git_scratch.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cli_env())


def weights(ckpt) -> dict:
    return load_file(ckpt / "model.safetensors")


def losses(run) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train.jsonl: 10 rows, captions and questions alternating, odd images 120 x 96, rows BAD unreadable."""
    root = tmp_path_factory.mktemp("data")
    rows = []
    for seed in range(10):
        image, caption, qa = shapes.sample(seed)
        path = root / f"{seed}.png"
        if seed in BAD:
            path.write_bytes(b"not an image")
        else:
            (image.resize((120, 96)) if seed % 2 else image).save(path)
        q, a = qa[0]
        rows.append({"image": path.name, "caption": caption} if seed % 2 == 0 else
                    {"image": path.name, "question": q, "answer": a})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "train.jsonl"


@pytest.fixture(scope="module")
def two_ranks(data, tmp_path_factory):
    """(run directory, stderr) of 4 steps in 2 processes, each reading ahead in a worker process."""
    out = tmp_path_factory.mktemp("two") / "run"
    r = torchrun("train", data, "--out", out, "--steps", "4", *TRAIN, "--workers", "1")
    assert r.returncode == 0, r.stderr
    return out, r.stderr


def test_two_ranks_train_as_one_process_with_the_same_global_batch(two_ranks, data, tmp_path, capsys):
    # one process reading in its own process (--workers 0) against two ranks with a worker each: the same examples
    code, _, err = in_process(capsys, "train", data, "--out", tmp_path, "--steps", "4", *TRAIN, "--workers", "0")
    assert code == 0
    two, one = weights(two_ranks[0] / "step-000004"), weights(tmp_path / "step-000004")
    worst = max((two[k] - one[k]).abs().max().item() for k in one)
    assert worst < PARAM_TOL
    assert [s for s, _ in losses(two_ranks[0])] == [s for s, _ in losses(tmp_path)] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(losses(two_ranks[0]), losses(tmp_path)):
        assert a == pytest.approx(b, rel=LOSS_RTOL)
    # the same examples were taken: the data position agrees exactly (each crop is drawn from its position's
    # own generator, training/feed.py, so the same positions are the same crops)
    a, b = (torch.load(run / "step-000004" / "state.pt", weights_only=False) for run in (two_ranks[0], tmp_path))
    assert a["position"] == b["position"] > 32  # 32 readable examples; the unreadable ones were passed over
    assert "2 examples skipped" in err and "2 examples skipped" in two_ranks[1]


def test_only_rank_0_writes_and_prints(two_ranks):
    out, err = two_ranks
    # .lock: the run directory's lock file (training/rundir.py), which rank 0 alone makes and keeps
    assert sorted(p.name for p in out.iterdir()) == [".lock", "curves.png", "latest", "metrics.jsonl", "run.json",
                                                     "step-000002", "step-000004"]
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4]  # one writer: no step twice
    assert err.count("trained to step 4") == 1 and err.count("10 rows") == 1


def test_resume_under_torchrun_continues_exactly(two_ranks, data, tmp_path):
    first = torchrun("train", data, "--out", tmp_path, "--steps", "2", *TRAIN)
    assert first.returncode == 0, first.stderr
    second = torchrun("train", data, "--out", tmp_path, "--steps", "4", "--resume", *TRAIN)
    assert second.returncode == 0, second.stderr
    # The same 2 processes doing the same float32 work in the same order: bit for bit.
    whole, resumed = weights(two_ranks[0] / "step-000004"), weights(tmp_path / "step-000004")
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    assert losses(tmp_path) == losses(two_ranks[0])  # steps 3-4 appended once, not restarted


def test_a_batch_the_ranks_cannot_share_is_a_usage_error(data, tmp_path):
    r = torchrun("train", data, "--out", tmp_path, "--steps", "1", *TRAIN, "--batch-size", "3")
    assert r.returncode != 0
    assert r.stderr.count("error: the batch size (3) is global under torchrun") == 1  # said once, by rank 0


# ---------------------------------------------------------------- captioning
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """7 shapes images and, last, one file that is not an image."""
    root = tmp_path_factory.mktemp("images")
    for i in range(7):
        shapes.sample(100 + i)[0].save(root / f"{i}.png")
    (root / "z-bad.png").write_bytes(b"not an image")
    return root


CAPTION = ("--batch-size", "2", "--max-new-tokens", "6", "--no-progress", "--json")


def by_file(recs: list[dict]) -> dict:
    return {r["file"]: r for r in recs}


@pytest.fixture(scope="module")
def one_process(two_ranks, images, tmp_path_factory):
    """(checkpoint, records) of one process captioning `images` (the trained 2-rank checkpoint)."""
    ckpt = two_ranks[0] / "step-000004"
    out = tmp_path_factory.mktemp("one") / "out.jsonl"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun ranks (the autouse one_thread is per test, not per module)
    try:
        assert main(["caption", str(images), "-c", str(ckpt), "-o", str(out), *CAPTION]) == 1  # z-bad.png fails
    finally:
        torch.set_num_threads(n)
    return ckpt, records(out.read_text())


def test_sharded_captions_are_one_process_captions_each_input_once(one_process, images, tmp_path):
    ckpt, expected = one_process
    out = tmp_path / "out.jsonl"
    r = torchrun("caption", images, "-c", ckpt, "-o", out, *CAPTION)
    assert r.returncode != 0  # z-bad.png failed (torchrun turns the ranks' exit code 1 into its own 1)
    saved, printed = records(out.read_text()), records(r.stdout)
    assert len(saved) == len({x["file"] for x in saved}) == 8  # each input exactly once
    # same batches (2 per rank per step, 2 per batch in one process): the same float32 work, bit for bit
    assert by_file(saved) == by_file(printed) == by_file(expected)
    assert r.stderr.count("z-bad.png") == 1 and r.stderr.count("1 failure(s)") == 1  # rank 0 alone speaks


def test_sharded_seeded_samples_are_one_process_samples(one_process, images, tmp_path, capsys):
    """Each input's sample depends on --seed and that input alone, not on which rank or batch ran it."""
    ckpt, greedy = one_process
    sample = ("--sample", "--temperature", "2", "--seed", "5")  # 2: samples that stray from the greedy words
    code, out, _ = in_process(capsys, "caption", images, "-c", ckpt, *CAPTION, *sample)
    r = torchrun("caption", images, "-c", ckpt, *CAPTION, *sample)
    assert code == r.returncode == 1  # z-bad.png
    one, two = by_file(records(out)), by_file(records(r.stdout))
    assert len(two) == 8 and two == one
    assert any(one[f]["ids"] != g["ids"] for f, g in by_file(greedy).items() if "ids" in g)  # it did sample


def test_sharded_captioning_resumes_without_doing_anything_twice(one_process, images, tmp_path):
    """A run killed after 3 results (its last record cut short) is finished by 2 ranks."""
    ckpt, expected = one_process
    out = tmp_path / "out.jsonl"
    done = [r for r in expected if "error" not in r][:3]
    out.write_text("".join(json.dumps(r) + "\n" for r in done) + '{"input": "cut sh')
    r = torchrun("caption", images, "-c", ckpt, "-o", out, *CAPTION)
    saved = records(out.read_text())
    assert r.stderr.count("resuming: 3 result(s) already in") == 1
    assert len(saved) == len({x["file"] for x in saved}) == 8
    assert saved[:3] == done and by_file(saved) == by_file(expected)
    assert len(records(r.stdout)) == 5  # only the new ones were computed
