"""`git-scratch train` against hostile runs: every case a documented exit code and one `error:` line naming
the flag or file, no traceback, no complete checkpoint lost, no file of the user's changed (issue 19).

Damaged run directories for --resume (an incomplete newest folder, a `latest` naming a missing step,
truncated files), runs that diverge, bad values checked before any compute, an --out that cannot be
used, a full disk, a second run on a locked --out, a resume with changed flags, pruning beside a user's
folders, held-out data that fails, and Ctrl-C and SIGTERM (the last in a subprocess, as it happens).
Every run is shapes-tiny on 20 samples, a few steps of batch 2.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from _cli_helpers import cli_command, cli_env, in_process as main, one_error
from _train_helpers import one_thread  # noqa: F401 (an autouse fixture)
from git_scratch import cli
from git_scratch.data import shapes
from git_scratch.training import checkpoints, loop
from git_scratch.training.checkpoints import complete_checkpoints
from git_scratch.training.curves import plot_curves, read_series

# --keep 5: no checkpoint of these short runs is pruned, so every one that is lost was lost by a bug
RUN = ("--batch-size", "2", "--bf16", "off", "--save-every", "1", "--keep", "5", "--log-every", "1",
       "--no-progress", "--shapes-samples", "20")


def train_args(out, *extra, steps=2) -> list:
    return ["train", "shapes", "--out", out, "--steps", steps, *RUN, *extra]


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def checkpoint_hashes(run: Path) -> dict[str, str]:
    """sha256 of every file of every complete checkpoint of `run`."""
    return {f"{c.name}/{k}": v for c in complete_checkpoints(run) for k, v in hashes(c).items()}


def metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step run: step-000001 and step-000002, `latest` naming the second."""
    out = tmp_path_factory.mktemp("trained") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread does for the tests
    try:
        assert cli.main([str(a) for a in train_args(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run, to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


# ---------------------------------------------------------------- 1. --resume never destroys good checkpoints
@pytest.mark.parametrize("damage", ["no state.pt", "latest names a missing step", "truncated state.pt",
                                    "truncated model.safetensors"])
def test_resume_falls_back_to_the_newest_complete_checkpoint_and_says_so(run, capsys, damage):
    newest = run / "step-000002"
    if damage == "no state.pt":
        (newest / "state.pt").unlink()
    elif damage == "latest names a missing step":
        shutil.rmtree(newest)
    else:
        f = newest / damage.split()[1]
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    kept = checkpoint_hashes(run)
    kept.pop("step-000002/state.pt", None), kept.pop("step-000002/model.safetensors", None)  # the damaged one's
    rc, _, err = main(capsys, *train_args(run, "--resume", steps=3))
    assert rc == 0 and "Traceback" not in err
    warning = next(line for line in err.splitlines() if line.startswith("warning: "))
    assert "step-000002" in warning and f"resuming from {run / 'step-000001'}" in warning
    assert metric_steps(run) == [1, 2, 2, 3]  # resumed after step 1: not from step 0
    after = checkpoint_hashes(run)
    assert {k: v for k, v in kept.items() if k.startswith("step-000001/")}.items() <= after.items()
    assert (run / "latest").read_text() == "step-000003\n"


def test_resume_with_every_checkpoint_unreadable_is_one_error_naming_the_files(run, capsys):
    for step in ("step-000001", "step-000002"):
        f = run / step / "state.pt"
        f.write_bytes(f.read_bytes()[:100])
    before = hashes(run)
    rc, _, err = main(capsys, *train_args(run, "--resume", steps=3))
    line = one_error(err)
    assert rc == 2
    assert str(run / "step-000002" / "state.pt") in line and str(run / "step-000001" / "state.pt") in line
    assert hashes(run) == before  # nothing written, nothing removed


@pytest.mark.parametrize("leaves", ["a complete checkpoint, no latest", "an incomplete step folder"])
def test_a_new_run_refuses_a_directory_holding_a_run(run, capsys, leaves):
    (run / "latest").unlink()
    (run / "metrics.jsonl").unlink()
    (run / "curves.png").unlink()
    if leaves == "an incomplete step folder":
        shutil.rmtree(run / "step-000001")
        (run / "step-000002" / "state.pt").unlink()
    before = hashes(run)
    rc, _, err = main(capsys, *train_args(run))
    line = one_error(err)
    assert rc == 2 and str(run) in line and "--resume" in line and "another --out" in line
    assert hashes(run) == before


def test_pruning_removes_only_this_runs_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "step-0-best").mkdir(parents=True)
    (out / "step-0-best" / "model.safetensors").write_bytes(b"the user's best weights")
    (out / "step-notes.txt").write_text("mine")
    (out / "step-1234567-x").mkdir()
    before = hashes(out)
    rc, _, err = main(capsys, *train_args(out, "--keep", "1", steps=3))
    assert rc == 0 and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step-")) == sorted([
        "step-000003", "step-0-best", "step-1234567-x", "step-notes.txt"])
    assert before.items() <= hashes(out).items()


# ---------------------------------------------------------------- 3. divergence
def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_keeps_the_finite_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    # lr 1e30 without warm-up: step 1's Adam update moves every weight by ~1e30, so step 2's forward overflows
    rc, _, err = main(capsys, *train_args(out, "--lr", "1e30", "--warmup", "0", "--clip", "0", steps=4))
    line = one_error(err)
    assert rc == 1 and "diverged at step 2" in line and str(out / "step-000001") in line
    assert [p.name for p in complete_checkpoints(out)] == ["step-000001"]
    assert (out / "latest").read_text() == "step-000001\n"

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    rows = [json.loads(line, parse_constant=refuse) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["loss"] is None


@pytest.mark.parametrize("lr", ["inf", "nan", "0", "-0.001"])
def test_a_learning_rate_that_is_not_finite_and_positive_is_a_usage_error(tmp_path, capsys, lr):
    rc, _, err = main(capsys, *train_args(tmp_path / "run", "--lr", lr))
    assert rc == 2 and one_error(err).startswith("error: --lr must be a finite number > 0")
    assert not (tmp_path / "run").exists()


def test_curves_pass_over_nan_null_infinity_and_a_cut_line(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 4.0}\n{"step": 2, "loss": NaN}\n{"step": 3, "loss": null}\n'
                       '{"step": 4, "loss": Infinity, "val_loss_hf": 3.5}\n{"step": 5, "loss": 2.0}\n{"step": 6, "lo')
    assert read_series(metrics) == {"loss": [(1, 4.0), (5, 2.0)], "val_loss_hf": [(4, 3.5)]}
    assert plot_curves(metrics, tmp_path / "curves.png") == tmp_path / "curves.png"
    metrics.write_text('{"step": 1, "loss": NaN}\n{"step": 2, "loss": null}\n')
    assert plot_curves(metrics, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


# ---------------------------------------------------------------- 5. usage errors, before any compute
@pytest.mark.parametrize("flag,value", [
    ("--steps", "0"), ("--steps", "-3"), ("--batch-size", "0"), ("--accum", "0"), ("--keep", "0"),
    ("--save-every", "0"), ("--log-every", "-1"), ("--eval-every", "-1"), ("--warmup", "-1"), ("--clip", "-1"),
    ("--min-lr", "1"), ("--weight-decay", "nan"), ("--seed", "-1"), ("--shapes-samples", "0"),
    ("--val-samples", "0"), ("--device", "nonsense"), ("--device", "meta"),
    *([("--device", "cuda")] if not torch.cuda.is_available() else [("--device", "cuda:99")]),
])
def test_a_bad_value_is_one_error_naming_the_flag_before_any_compute(tmp_path, capsys, monkeypatch, flag, value):
    monkeypatch.setattr("git_scratch.cli.train.prepare", lambda *a, **k: pytest.fail("built the model"))
    rc, _, err = main(capsys, *train_args(tmp_path / "run", flag, value))
    assert rc == 2 and one_error(err).startswith(f"error: {flag} ")
    assert not (tmp_path / "run").exists()


def test_usage_errors_under_torchrun_are_said_by_rank_0_alone(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # what torchrun tells every process but the first, before the group is joined
    rc, _, err = main(capsys, *train_args(tmp_path / "run", "--steps", "0"))
    assert (rc, err) == (2, "")


def test_an_empty_out_is_refused_and_nothing_is_written_here(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = main(capsys, *train_args(""))
    assert rc == 2 and one_error(err).startswith("error: --out is empty")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["a file", "below a file", "a read-only place"])
def test_an_out_that_cannot_be_a_run_directory_is_one_error(tmp_path, capsys, where):
    notes = tmp_path / "notes.txt"
    notes.write_text("the user's")
    out = {"a file": notes, "below a file": notes / "run", "a read-only place": Path("/sys/git-scratch-test")}[where]
    if where == "a read-only place" and not Path("/sys").is_dir():
        pytest.skip("no /sys here: no folder that even root cannot write")
    rc, _, err = main(capsys, *train_args(out))
    line = one_error(err)
    assert rc == 2 and line.startswith(f"error: --out {out}")
    assert notes.read_text() == "the user's"
    assert out == notes or not out.exists()


def test_an_error_after_the_checks_leaves_no_out_folder_behind(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    rc, _, err = main(capsys, "train", tmp_path / "missing.jsonl", "--out", out, "--no-progress",
                      "--tokenizer", shapes.VOCAB_DIR)
    assert rc == 2 and "missing.jsonl" in one_error(err)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_error_and_keeps_the_last_checkpoint(run, capsys, monkeypatch):
    before = checkpoint_hashes(run)

    def full(model, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"\0" * 100)  # part written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "save", full)
    rc, _, err = main(capsys, *train_args(run, "--resume", steps=3))
    line = one_error(err)
    assert rc == 2 and line.startswith(f"error: no space left on device writing {run / 'step-000003'}")
    assert str(run / "step-000002") in line  # the checkpoint kept
    assert checkpoint_hashes(run) == before and (run / "latest").read_text() == "step-000002\n"
    assert not list(run.glob(".tmp-*")) and not (run / "step-000003").exists()


def test_a_second_run_on_a_locked_out_is_refused(run, capsys):
    before = hashes(run)
    with open(run / ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as the first run holds it for its life
        rc, _, err = main(capsys, *train_args(run, "--resume", steps=3))
    line = one_error(err)
    assert rc == 2 and f"--out {run} is in use by another" in line
    assert hashes(run) == before


# ---------------------------------------------------------------- 9. resume with changed flags
def test_a_resume_that_changes_what_defines_the_run_is_refused_naming_each_flag(run, capsys):
    before = hashes(run)
    rc, _, err = main(capsys, *train_args(run, "--resume", "--batch-size", "4", "--seed", "1", "--freeze-vision",
                                          steps=3))
    line = one_error(err)
    assert rc == 2
    assert "--batch-size 2 -> 4" in line and "--seed 0 -> 1" in line and "--freeze-vision off -> on" in line
    assert hashes(run) == before


def test_a_resume_applies_a_new_learning_rate_and_says_so(run, capsys):
    rc, _, err = main(capsys, *train_args(run, "--resume", "--lr", "5e-4", steps=3))
    assert rc == 0 and "Traceback" not in err
    assert "--steps 2 -> 3" in err and "--lr 0.0001 -> 0.0005" in err
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    # Step 3 is the third of the default 100 warm-up steps: 3/100 of the new peak, 1.5e-5 (the old peak gives
    # 3e-6). rel 1e-12: the same product rounded in another order differs in the last bit at most.
    assert last["step"] == 3 and last["lr"] == pytest.approx(5e-4 * 3 / 100, rel=1e-12)


# ---------------------------------------------------------------- held-out data, stops
def test_held_out_data_that_fails_is_one_error_after_the_checkpoint_is_saved(tmp_path, capsys, monkeypatch):
    def no_data(*a, **k):
        raise ValueError("no readable example in the held-out data")  # as data/batches.mean_losses says

    monkeypatch.setattr(loop, "mean_losses", no_data)
    out = tmp_path / "run"
    rc, _, err = main(capsys, *train_args(out, "--val", "shapes", "--val-samples", "2", "--eval-every", "1"))
    line = one_error(err)
    assert rc == 2 and "--val" in line and "no readable example" in line
    assert [p.name for p in complete_checkpoints(out)] == ["step-000001"]  # saved before the evaluation


def test_held_out_data_with_no_usable_row_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "val.jsonl").write_text('{"image": "missing.png", "caption": "a red square"}\n')
    out = tmp_path / "run"
    rc, _, err = main(capsys, *train_args(out, "--val", tmp_path / "val.jsonl"))
    assert rc == 2 and f"{tmp_path / 'val.jsonl'} has no usable example" in one_error(err)
    assert not out.exists()  # refused before the first step: the run folder it made is gone again


def test_ctrl_c_says_which_checkpoint_to_resume_and_exits_130(tmp_path, capsys, monkeypatch):
    calls = []

    def stack(rows, pad_id):
        calls.append(1)
        if len(calls) == 3:  # in step 3, after step 2's checkpoint
            raise KeyboardInterrupt
        return real(rows, pad_id)

    real = loop.stack
    monkeypatch.setattr(loop, "stack", stack)
    out = tmp_path / "run"
    rc, _, err = main(capsys, *train_args(out, steps=5))
    assert rc == 130 and "Traceback" not in err
    assert err.splitlines()[-1] == f"interrupted; resume with --resume from {out / 'step-000002'}"


def test_sigterm_stops_training_with_143_and_names_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([*cli_command(), *map(str, train_args(out, steps=10_000))], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=cli_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "latest").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    rc, err = proc.wait(timeout=60), proc.stderr.read().decode()
    assert rc == 143 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith(f"terminated (SIGTERM); resume with --resume from {out}{Path('/')}step-")
    assert Path(last.rsplit(" ", 1)[1]) == complete_checkpoints(out)[-1]
    assert math.isfinite(json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"])
