"""Training (git_scratch/train.py): it learns, resumes exactly, and survives a killed save.

Most tests use _train_helpers.mini_config, shapes-tiny cut down to one narrow layer per tower (a few ms a step on a CPU);
one test trains shapes-tiny itself for a few steps. float32 throughout (bf16="off"), so runs compare bit
for bit."""

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

import git_scratch
from _train_helpers import new_model, one_thread  # noqa: F401 (an autouse fixture)
from git_scratch import GitConfig
from git_scratch.cli.main import main
from git_scratch.data import shapes
from git_scratch.data.datasets import ShapesDataset
from git_scratch.training.checkpoints import RunError, latest_checkpoint
from git_scratch.data.batches import batch_loss, collate
from git_scratch.training.feed import CROP_SCALE, random_resized_crop
from git_scratch.training.loop import TrainOptions, lr_factor, param_groups, train

OPTS = TrainOptions(steps=4, batch_size=4, accum=2, lr=1e-3, warmup=1, save_every=2, log_every=1,
                    bf16="off", progress=False)


def fixed_batch(n=16, seed=10_000):
    data = ShapesDataset(n, "both", offset=seed)
    return collate([data[i] for i in range(n)], shapes.processor())


@torch.no_grad()
def eval_loss(model, batch, loss="hf") -> float:
    model.eval()
    return batch_loss(model, batch, loss).item()


@pytest.mark.parametrize("loss", ["hf", "original"])
def test_a_few_steps_on_shapes_tiny_lower_the_loss(tmp_path, loss):
    model = new_model(GitConfig.preset("shapes-tiny"))
    batch = fixed_batch()
    before = eval_loss(model, batch, loss)
    opts = replace(OPTS, steps=16, batch_size=8, accum=1, warmup=2, save_every=16, loss=loss)
    train(model, ShapesDataset(1000, "both"), shapes.processor(), opts, tmp_path)
    after = eval_loss(model, batch, loss)
    # From random init (hf loss ~ ln 94 = 4.5) 16 steps at lr 1e-3 learn the grammar's frequent words:
    # measured 4.59 -> 2.63 (hf), 3.81 -> 2.07 (original), on samples never trained on. A 25% drop leaves
    # room for other CPUs' rounding and fails if nothing is learned.
    assert after < 0.75 * before


def test_resume_continues_exactly(tmp_path):
    data, proc = ShapesDataset(50, "both"), shapes.processor()
    one = new_model()
    train(one, data, proc, OPTS, tmp_path / "one")

    two = new_model()
    train(two, data, proc, OPTS, tmp_path / "two", stop_at=2)  # cut after its step-2 checkpoint
    resumed = new_model(seed=99)  # different weights: the checkpoint must overwrite all of them
    train(resumed, data, proc, OPTS, tmp_path / "two", resume=True)
    for (name, a), b in zip(one.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # and the metrics of steps 3-4 were appended, not restarted
    steps = [json.loads(line)["step"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_differs_without_restored_state(tmp_path):
    """The control for the test above: the same split run, but the second half starting fresh from the
    step-2 weights (no optimizer, scheduler, RNG or data position) does not match."""
    data, proc = ShapesDataset(50, "both"), shapes.processor()
    one = new_model()
    train(one, data, proc, OPTS, tmp_path / "one")
    two = new_model()
    train(two, data, proc, OPTS, tmp_path / "two", stop_at=2)
    train(two, data, proc, OPTS, tmp_path / "fresh", stop_at=2)
    assert not torch.equal(one.lm_head.weight, two.lm_head.weight)


def test_killed_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data, proc = ShapesDataset(50, "both"), shapes.processor()
    model = new_model()
    train(model, data, proc, OPTS, tmp_path, stop_at=2)
    good = latest_checkpoint(tmp_path)
    assert good.name == "step-000002"
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    def dies_mid_write(obj, f, *a, **k):
        f.write(b"\x80\x02partial")  # a few bytes into the file it is handed, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        train(model, data, proc, OPTS, tmp_path, resume=True)
    monkeypatch.undo()

    assert latest_checkpoint(tmp_path) == good
    assert not (tmp_path / "step-000004").exists()
    loaded = git_scratch.load(good)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, expected[k]), k
    # and the run resumes from it, past the leftover temporary folder
    assert train(model, data, proc, OPTS, tmp_path, resume=True)["step"] == 4
    assert latest_checkpoint(tmp_path).name == "step-000004"
    assert not list(tmp_path.glob(".tmp-*"))  # the killed save's folder is gone


def test_checkpoint_loads_as_a_model_and_keeps_the_newest(tmp_path):
    model = new_model()
    train(model, ShapesDataset(50), shapes.processor(), replace(OPTS, steps=6, keep=2), tmp_path)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000004", "step-000006"]
    loaded = git_scratch.load(tmp_path / "step-000006")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    proc = git_scratch.Processor.from_pretrained(tmp_path / "step-000006")  # the checkpoint carries its processor
    assert proc.tokenizer.vocab_size == 94 and proc.image_config.crop_size["height"] == 96


def test_weight_decay_by_shape_skips_norms_biases_and_parameters_it_does_not_know():
    model = new_model()
    model.blocks[0].ln_1 = torch.nn.RMSNorm(model.config.text.dim)  # kinds the loop was never told about
    model.blocks[0].attn.gate = torch.nn.Parameter(torch.ones(()))
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"embed.ln.weight", "lm_head.bias", "blocks.0.ln_1.weight", "blocks.0.attn.gate"} <= skipped
    assert all(p.ndim < 2 for p in no_decay["params"]) and all(p.ndim >= 2 for p in decay["params"])
    assert {names[id(p)] for p in decay["params"]} >= {"lm_head.weight", "embed.tok_embed.weight"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_lr_warms_up_then_decays_to_the_floor():
    lrs = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert lrs[20] == pytest.approx(0.1)


def test_frozen_vision_keeps_its_weights(tmp_path):
    model = new_model()
    vision = {k: v.clone() for k, v in model.vision.state_dict().items()}
    proj = model.img_proj.fc.weight.clone()
    train(model, ShapesDataset(50), shapes.processor(), replace(OPTS, steps=2, freeze_vision=True), tmp_path)
    assert all(torch.equal(v, model.vision.state_dict()[k]) for k, v in vision.items())
    assert not torch.equal(proj, model.img_proj.fc.weight)


def test_gradient_checkpointing_gives_the_same_training(tmp_path):
    data, proc = ShapesDataset(50, "both"), shapes.processor()
    plain, ckpt = new_model(), new_model()
    train(plain, data, proc, replace(OPTS, steps=2), tmp_path / "a")
    train(ckpt, data, proc, replace(OPTS, steps=2, grad_checkpointing=True), tmp_path / "b")
    # Recomputation runs the same float32 kernels in the same order: bit-identical results.
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        assert torch.equal(a, b), name
    assert set(plain.state_dict()) == set(ckpt.state_dict())  # parameter names unchanged


def test_bf16_autocast_trains(tmp_path):
    model = new_model()
    out = train(model, ShapesDataset(50), shapes.processor(), replace(OPTS, steps=2, bf16="on"), tmp_path)
    assert torch.isfinite(torch.tensor(out["loss"]))
    assert model.lm_head.weight.dtype == torch.float32  # autocast computes in bf16; the weights stay float32


def test_random_resized_crop_is_square_and_seeded():
    im = shapes.sample(3)[0].resize((110, 100))  # near square: most tries fit
    a = random_resized_crop(im, 96, torch.Generator().manual_seed(1))
    b = random_resized_crop(im, 96, torch.Generator().manual_seed(1))
    assert a.size == (96, 96) and a.tobytes() == b.tobytes()
    assert a.tobytes() != random_resized_crop(im, 96, torch.Generator().manual_seed(2)).tobytes()


def test_random_resized_crop_of_a_wide_image_falls_back_to_the_centre_square():
    # 3:1: even 80% of the area is a square wider than the image is tall, so every try fails, as in torchvision
    im = Image.new("RGB", (300, 100), "red")
    im.paste((0, 0, 255), (100, 0, 200, 100))  # a blue centre square
    out = random_resized_crop(im, 50, torch.Generator().manual_seed(0))
    assert out.getcolors() == [(2500, (0, 0, 255))]


def test_random_resized_crop_never_cuts_into_the_shapes_margin():
    # the smallest crop keeps 80% of the area: a side of ceil(sqrt(0.8) * 96) = 86 px, 10 px = MARGIN cut
    side = round((CROP_SCALE[0] * shapes.SIZE**2) ** 0.5)
    assert shapes.SIZE - side <= shapes.MARGIN


def test_unreadable_examples_are_skipped_and_counted(tmp_path, capsys):
    Image.new("RGB", (96, 96), "red").save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    rows = [{"image": "a.png", "caption": "a red square"}, {"image": "bad.png", "caption": "a blue circle"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    code = main(["train", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "run"), "--steps", "2",
                 "--batch-size", "2", "--bf16", "off", "--save-every", "2", "--no-progress",
                 "--tokenizer", str(shapes.VOCAB_DIR)])
    assert code == 0
    err = capsys.readouterr().err
    assert err.count("bad.png") == 1 and f"{tmp_path / 'train.jsonl'}:3: not valid JSON" in err
    assert "2 examples skipped" in err
    assert latest_checkpoint(tmp_path / "run").name == "step-000002"


def test_cli_trains_shapes_and_resumes(tmp_path, capsys):
    args = ["train", "shapes", "--out", str(tmp_path), "--steps", "2", "--batch-size", "2", "--bf16", "off",
            "--save-every", "1", "--no-progress", "--shapes-samples", "20"]
    assert main(args) == 0
    assert main(args[:5] + ["3"] + args[6:] + ["--resume"]) == 0
    assert latest_checkpoint(tmp_path).name == "step-000003"


def test_held_out_losses_are_logged_and_plotted(tmp_path):
    val = ShapesDataset(8, "both", offset=10**6)
    out = train(new_model(), ShapesDataset(50, "both"), shapes.processor(), replace(OPTS, eval_every=2), tmp_path,
                val=val)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    held = [r for r in rows if "val_loss_hf" in r]
    assert [r["step"] for r in held] == [2, 4]
    assert held[-1]["val_loss_hf"] == out["val"]["loss_hf"] > 0 and out["val"]["loss_original"] > 0
    with Image.open(tmp_path / "curves.png") as im:
        assert im.size == (720, 420)
        # all three curves are drawn: each series colour is on the image
        from git_scratch.training.curves import SERIES

        colours = {c for _, c in im.convert("RGB").getcolors(720 * 420)}
        assert all(colour in colours for _, colour in SERIES.values())


def test_held_out_evaluation_keeps_resume_exact(tmp_path):
    data, val, proc = ShapesDataset(50, "both"), ShapesDataset(4, offset=10**6), shapes.processor()
    opts = replace(OPTS, eval_every=1)
    one, two = new_model(), new_model()
    train(one, data, proc, opts, tmp_path / "one", val=val)
    train(two, data, proc, opts, tmp_path / "two", stop_at=2, val=val)
    train(two, data, proc, opts, tmp_path / "two", resume=True, val=val)
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        assert torch.equal(a, b), name


def test_cli_reports_bad_data_files_without_a_traceback(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("file,caption\na.png,x\n")
    assert main(["train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "run"), "--no-progress",
                 "--tokenizer", str(shapes.VOCAB_DIR)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'image' column" in err and "Traceback" not in err


def test_a_new_run_refuses_a_directory_that_holds_one(tmp_path):
    train(new_model(), ShapesDataset(20), shapes.processor(), replace(OPTS, steps=1), tmp_path)
    with pytest.raises(RunError, match="already holds a run"):
        train(new_model(), ShapesDataset(20), shapes.processor(), replace(OPTS, steps=1), tmp_path)


def test_compat_original_trains_with_the_original_loss(tmp_path, capsys):
    """`--compat original` = `--loss original` step for step; the default (transformers) is the hf loss."""
    def losses(*extra):
        out = tmp_path / "-".join(extra or ("default",))
        assert main(["train", "shapes", "--out", str(out), "--steps", "2", "--batch-size", "2", "--bf16", "off",
                     "--log-every", "1", "--no-progress", "--shapes-samples", "20", *extra]) == 0
        return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    original = losses("--compat", "original")
    assert original == losses("--loss", "original")
    assert original != losses()
    assert TrainOptions(compat="original").loss == "original" and TrainOptions().loss == "hf"
    with pytest.raises(ValueError, match="compat 'original' trains with the original's loss"):
        TrainOptions(compat="original", loss="hf")
    with pytest.raises(ValueError, match="compat must be one of 'transformers', 'original', got 'hf'"):
        TrainOptions(compat="hf")


def test_every_run_directory_gets_a_readable_run_json(tmp_path):
    from git_scratch.data.datasets import ShapesDataset
    from git_scratch.data import shapes

    model = new_model(GitConfig.preset("shapes-tiny"))
    opts = TrainOptions(steps=1, batch_size=2, bf16="off", augment=False, save_every=1, progress=False)
    train(model, ShapesDataset(4, "caption"), shapes.processor(), opts, tmp_path / "run", record={"preset": "x"})
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["options"]["steps"] == 1 and run["run"] == {"preset": "x"}
    assert run["model"]["text"]["n_layers"] == model.config.text.n_layers
    assert run["git_scratch"] and {"host", "torch", "device"} <= set(run["machine"]) and "commit" in run
    train(model, ShapesDataset(4, "caption"), shapes.processor(), TrainOptions(**{**vars(opts), "steps": 2}),
          tmp_path / "run", resume=True)  # run.json is the run's own file: a resume takes the folder as a run
