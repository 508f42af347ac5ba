"""A training run's `latest` file and its run directory work wherever a checkpoint directory does
(`caption -c runs/x/latest`, `demo -c runs/x`, `git_scratch.load("runs/x")`): each names the run's last
complete checkpoint, and a pointer to nothing is one clear error."""

from __future__ import annotations

import json

import pytest
import torch

from _train_helpers import new_model, one_thread  # noqa: F401 (an autouse fixture)
from git_scratch import load
from git_scratch.cli.main import main
from git_scratch.data import shapes
from git_scratch.data.datasets import ShapesDataset
from git_scratch.load import checkpoint_dir
from git_scratch.preprocessing.processor import Processor
from git_scratch.training.loop import TrainOptions, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with two complete checkpoints (steps 1 and 2); `latest` names step-000002."""
    out = tmp_path_factory.mktemp("run")
    opts = TrainOptions(steps=2, batch_size=2, warmup=1, save_every=1, keep=2, bf16="off", progress=False)
    torch.set_num_threads(1)
    train(new_model(), ShapesDataset(8, "both"), shapes.processor(), opts, out)
    return out


def test_latest_and_the_run_directory_name_the_last_checkpoint(run):
    assert checkpoint_dir(run / "latest") == run / "step-000002"
    assert checkpoint_dir(run) == run / "step-000002"
    assert checkpoint_dir(run / "step-000001") == run / "step-000001"  # a checkpoint is itself


def test_load_and_the_processor_read_a_run_through_latest(run):
    want = load(run / "step-000002").state_dict()
    for path in (run / "latest", run):
        got = load(path).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert Processor.from_pretrained(path).tokenizer.vocab_size == shapes.processor().tokenizer.vocab_size


def test_caption_with_latest_records_the_checkpoint_it_names(run, tmp_path, capsys):
    image = tmp_path / "a.png"
    shapes.sample(3)[0].save(image)
    records = {}
    for ckpt in (run / "latest", run / "step-000002"):
        capsys.readouterr()
        assert main(["caption", image, "-c", ckpt, "--json", "--no-progress", "--max-new-tokens", "4"]) == 0
        records[ckpt.name] = json.loads(capsys.readouterr().out)
    assert records["latest"]["ids"] == records["step-000002"]["ids"]
    assert records["latest"]["settings"] == records["step-000002"]["settings"]


def test_demo_runs_from_a_run_directory(run, capsys):
    capsys.readouterr()
    assert main(["demo", "-c", run, "--n", "1", "--seed", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["seed"] == 5


def test_a_latest_naming_no_checkpoint_is_one_error_line(run, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "latest").write_text("step-000009\n")
    for ckpt in (broken / "latest", broken):
        capsys.readouterr()
        try:
            rc = main(["caption", run / "x.png", "-c", ckpt, "--no-progress"])
        except SystemExit as e:  # argparse's usage error
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2
        assert "step-000009" in err and "not a checkpoint directory" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="step-000009"):
        load(broken)
