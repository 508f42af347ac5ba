"""git_scratch.convert: the name table, the completeness checks, the file formats, and the failure messages."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import git_scratch
from reference import build
from git_scratch.convert import ConversionError, convert
from git_scratch.convert.convert import NAME_MAP, rename


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build("tiny", tmp_path_factory.mktemp("conv"))


def tree_digest(path):
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def copy_hf(tiny, tmp_path, mutate=None):
    """A copy of the tiny HF checkpoint, its state dict changed by `mutate(state)`."""
    src = tmp_path / "src"
    shutil.copytree(tiny.hf_dir, src)
    if mutate:
        state = load_file(src / "model.safetensors")
        mutate(state)
        save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    return src


def logits(model, ref):
    px, ids = ref.pixels(1, seed=7), ref.ids(1, 5, seed=7)
    with torch.no_grad():
        return model(px, ids).logits


def test_table_maps_every_transformers_parameter_one_to_one(tiny):
    hf_keys = list(tiny.hf.state_dict())
    names = rename(hf_keys, NAME_MAP, dropped=())
    assert len(set(names.values())) == len(hf_keys)
    assert set(names.values()) == set(tiny.ours.state_dict())


def test_converted_checkpoint_reloads_identical_weights(tiny):
    ours = load_file(tiny.our_dir / "model.safetensors")
    hf = tiny.hf.state_dict()
    names = rename(hf, NAME_MAP)
    for k, v in hf.items():
        assert torch.equal(ours[names[k]], v), k


def test_source_directory_is_never_modified(tiny, tmp_path):
    before = tree_digest(tiny.hf_dir)
    convert(tiny.hf_dir, tmp_path / "out")
    assert tree_digest(tiny.hf_dir) == before


def test_tokenizer_files_are_copied(tiny, tmp_path):
    src = copy_hf(tiny, tmp_path)
    vocab = "[PAD]\n[CLS]\n[SEP]\n[UNK]\n"  # the tiny config's pad, bos, eos ids: 0, 1, 2
    (src / "vocab.txt").write_text(vocab)
    (src / "preprocessor_config.json").write_text("{}")
    summary = convert(src, tmp_path / "out")
    assert summary["copied"] == ["vocab.txt", "preprocessor_config.json"]
    assert (tmp_path / "out" / "vocab.txt").read_text() == vocab
    assert summary["warnings"] == []


def test_transformers_5_processor_config_is_copied_and_read(tiny, tmp_path):
    """transformers 5's GitProcessor.save_pretrained writes the image settings to processor_config.json only."""
    from transformers import BertTokenizerFast, CLIPImageProcessorPil, GitProcessor

    src = copy_hf(tiny, tmp_path)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]) + "\n")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "bos_token_id": 2, "eos_token_id": 3}))  # as the tokenizer's
    images = CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 40, "width": 24})
    GitProcessor(images, BertTokenizerFast(vocab_file=str(vocab))).save_pretrained(src)
    assert (src / "processor_config.json").is_file() and not (src / "preprocessor_config.json").exists()
    summary = convert(src, tmp_path / "out")
    assert "processor_config.json" in summary["copied"] and summary["warnings"] == []
    processor = git_scratch.Processor.from_pretrained(tmp_path / "out")
    assert processor.image_config.crop_size == {"height": 40, "width": 24}
    px = processor(images=np.zeros((50, 60, 3), np.uint8))["pixel_values"]
    assert tuple(px.shape) == (1, 3, 40, 24)


def test_a_checkpoint_without_preprocessing_settings_is_converted_with_a_warning(tiny, tmp_path):
    src = copy_hf(tiny, tmp_path)
    for name in ("preprocessor_config.json", "processor_config.json"):
        (src / name).unlink(missing_ok=True)
    summary = convert(src, tmp_path / "out")
    assert summary["warnings"] == [
        f"{src} has no preprocessing settings (preprocessor_config.json or processor_config.json); using GIT's "
        "published defaults: shortest edge resized to 224 (bicubic), centre crop 224x224, CLIP mean and std"]
    with pytest.warns(UserWarning) as caught:
        git_scratch.Processor.from_pretrained(tmp_path / "out")
    assert [str(w.message) for w in caught] == [summary["warnings"][0].replace(str(src), str(tmp_path / "out"))]


def test_pytorch_bin_with_stale_position_ids_converts(tiny, tmp_path):
    """Published checkpoints are pytorch_model.bin files that still carry the position_ids buffers."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tiny.hf_dir / "config.json", src)
    state = dict(tiny.hf.state_dict())
    state["git.embeddings.position_ids"] = torch.arange(64)[None]
    state["git.image_encoder.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    torch.save(state, src / "pytorch_model.bin")
    summary = convert(src, tmp_path / "out")
    assert len(summary["dropped"]) == 2
    assert torch.equal(logits(git_scratch.load(tmp_path / "out"), tiny), logits(tiny.ours, tiny))


def test_sharded_safetensors_convert(tiny, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tiny.hf_dir / "config.json", src)
    state = {k: v.contiguous() for k, v in tiny.hf.state_dict().items()}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for fname, ks in shards.items():
        save_file({k: state[k] for k in ks}, src / fname, metadata={"format": "pt"})
    index = {"weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    convert(src, tmp_path / "out")
    assert torch.equal(logits(git_scratch.load(tmp_path / "out"), tiny), logits(tiny.ours, tiny))


def test_dtype_cast(tiny, tmp_path):
    convert(tiny.hf_dir, tmp_path / "out", dtype="bfloat16")
    state = load_file(tmp_path / "out" / "model.safetensors")
    assert {v.dtype for v in state.values()} == {torch.bfloat16}
    assert git_scratch.load(tmp_path / "out", dtype="bfloat16").dtype == torch.bfloat16


def test_to_hf_round_trip_loads_in_transformers(tiny, tmp_path):
    from transformers import GitForCausalLM

    convert(tiny.our_dir, tmp_path / "back", to_hf=True)
    back = GitForCausalLM.from_pretrained(tmp_path / "back").eval()
    for k, v in tiny.hf.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    px, ids = tiny.pixels(2, seed=5), tiny.ids(2, 6, seed=5)
    with torch.no_grad():
        assert torch.equal(back(pixel_values=px, input_ids=ids).logits, tiny.hf(pixel_values=px, input_ids=ids).logits)
    # and forward again: HF -> ours -> HF -> ours gives the same checkpoint
    convert(tmp_path / "back", tmp_path / "again")
    a, b = load_file(tmp_path / "again" / "model.safetensors"), load_file(tiny.our_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tied_checkpoint_round_trip(tmp_path):
    from transformers import GitForCausalLM

    ref = build("odd-silu", tmp_path)  # tie_word_embeddings=True
    assert ref.ours.lm_head.weight is ref.ours.embed.tok_embed.weight
    convert(ref.our_dir, tmp_path / "back", to_hf=True)
    back = GitForCausalLM.from_pretrained(tmp_path / "back").eval()
    px, ids = ref.pixels(1), ref.ids(1, 4)
    with torch.no_grad():
        assert torch.equal(back(pixel_values=px, input_ids=ids).logits, ref.hf(pixel_values=px, input_ids=ids).logits)


# ---------------------------------------------------------------- failures, each with its message
def expect_failure(src, dst, match):
    with pytest.raises(ConversionError, match=match):
        convert(src, dst)
    assert not dst.exists(), "a failed conversion must leave no destination behind"
    assert not [p for p in dst.parent.iterdir() if ".partial-" in p.name], "temporary directory left behind"


def test_missing_key_is_named(tiny, tmp_path):
    src = copy_hf(tiny, tmp_path, lambda s: s.pop("git.encoder.layer.1.output.dense.bias"))
    expect_failure(src, tmp_path / "out", r"missing 1 git_scratch parameter\(s\): blocks\.1\.mlp\.fc2\.bias "
                                          r"\(Hugging Face git\.encoder\.layer\.1\.output\.dense\.bias\)$")


def test_extra_key_is_named(tiny, tmp_path):
    src = copy_hf(tiny, tmp_path, lambda s: s.update({"git.encoder.layer.0.attention.self.rotary": torch.ones(2)}))
    expect_failure(src, tmp_path / "out", r"match no row of the name table: git\.encoder\.layer\.0\.attention\.self\.rotary")


def test_extra_layer_is_named(tiny, tmp_path):
    """A layer the config does not declare maps by the table but has no place in the model."""
    src = copy_hf(tiny, tmp_path, lambda s: s.update({"git.encoder.layer.7.output.dense.bias": torch.ones(32)}))
    expect_failure(src, tmp_path / "out", r"unexpected 1 git_scratch parameter\(s\): blocks\.7\.mlp\.fc2\.bias")


def test_wrong_shape_is_named(tiny, tmp_path):
    def shrink(s):
        s["git.visual_projection.visual_projection.0.weight"] = torch.zeros(32, 31)

    src = copy_hf(tiny, tmp_path, shrink)
    expect_failure(src, tmp_path / "out", r"wrong shape.*img_proj\.fc\.weight \(32, 31\) != expected \(32, 32\)")


def test_truncated_file_is_named(tiny, tmp_path):
    src = copy_hf(tiny, tmp_path)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    expect_failure(src, tmp_path / "out", r"model\.safetensors: cannot read weights.*truncated or corrupt")


def test_empty_directory_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    expect_failure(tmp_path / "empty", tmp_path / "out", r"empty: no config\.json")


def test_config_without_weights_is_named(tiny, tmp_path):
    (tmp_path / "src").mkdir()
    shutil.copy(tiny.hf_dir / "config.json", tmp_path / "src")
    expect_failure(tmp_path / "src", tmp_path / "out", r"no weights found")


def test_unknown_activation_is_an_error(tiny, tmp_path):
    src = copy_hf(tiny, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["hidden_act"] = "mish_v9"
    (src / "config.json").write_text(json.dumps(cfg))
    expect_failure(src, tmp_path / "out", r"unknown activation 'mish_v9'")


def test_a_config_that_is_not_a_json_object_is_named(tiny, tmp_path):
    src = copy_hf(tiny, tmp_path)
    (src / "config.json").write_text("[1, 2]")
    expect_failure(src, tmp_path / "out", r"config\.json: not a checkpoint config \(a JSON list, not an object\)$")


def test_a_destination_under_a_file_is_named(tiny, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError) as info:
        convert(tiny.hf_dir, tmp_path / "notes.txt" / "out")
    notes = tmp_path / "notes.txt"
    assert str(info.value) == f"cannot write {notes / 'out'}: {notes} is a file, not a directory"
    assert notes.read_text() == "mine"


SPECIALS_FIRST = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]  # [CLS] = 2, [SEP] = 3; the tiny config: 1, 2


def test_a_tokenizer_that_disagrees_with_the_config_converts_with_a_warning(tiny, tmp_path):
    src = copy_hf(tiny, tmp_path)
    (src / "vocab.txt").write_text("\n".join(SPECIALS_FIRST) + "\n")
    summary = convert(src, tmp_path / "out")
    assert summary["warnings"][0] == (
        f"{src}: the tokenizer and config.json disagree: [CLS] is 2 in the tokenizer, bos 1 in config.json; [SEP] is "
        "3 in the tokenizer, eos 2 in config.json. Prompts are built with the tokenizer's ids and generation uses "
        "config.json's: correct whichever file is wrong")
    with pytest.warns(UserWarning) as caught:  # and again each time the converted checkpoint is loaded
        git_scratch.Processor.from_pretrained(tmp_path / "out")
    assert summary["warnings"][0].replace(str(src), str(tmp_path / "out")) in [str(w.message) for w in caught]


def test_an_unreadable_tokenizer_is_refused(tiny, tmp_path):
    src = copy_hf(tiny, tmp_path)
    (src / "tokenizer.json").write_text('{"version": "1.0", "truncated')
    expect_failure(src, tmp_path / "out", r"tokenizer\.json: not a tokenizer file the tokenizers library can read "
                                          r"\(.+\); the converted checkpoint could not turn ids into text$")


def test_existing_destination_is_kept_unless_overwrite(tiny, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists"):
        convert(tiny.hf_dir, dst)
    assert (dst / "keep.txt").read_text() == "mine"
    convert(tiny.hf_dir, dst, overwrite=True)
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").is_file()


def test_command_line_reports_failure_with_exit_code(tiny, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "git_scratch.convert", str(tiny.hf_dir), str(tmp_path / "a")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "converted" in ok.stderr
    (tmp_path / "empty").mkdir()
    bad = subprocess.run([sys.executable, "-m", "git_scratch.convert", str(tmp_path / "empty"), str(tmp_path / "b")],
                         capture_output=True, text=True)
    assert bad.returncode == 2  # a failed conversion: 2 from both entry points, as git-scratch convert exits
    assert bad.stderr == f"error: {tmp_path / 'empty'}: no config.json (is this a checkpoint directory?)\n"


class PickledState(dict):
    """A state dict in a class of its own: a pickle that holds more than tensors and plain containers."""


def pickled_checkpoint(tiny, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tiny.hf_dir / "config.json", src)
    torch.save(PickledState(tiny.hf.state_dict()), src / "pytorch_model.bin")
    return src


def test_a_pickle_with_more_than_tensors_is_refused_with_the_safe_ways_on(tiny, tmp_path, capsys):
    from git_scratch import cli

    src = pickled_checkpoint(tiny, tmp_path)
    rc = cli.main(["convert", src, tmp_path / "out"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and not (tmp_path / "out").exists()
    assert err == (f"error: {src / 'pytorch_model.bin'}: holds more than tensors (it names the Python object "
                   f"{__name__}.PickledState), and unpickling it could run any code it carries; convert a "
                   "safetensors copy of the checkpoint instead (model.safetensors), or, only for a file from a "
                   "source you trust, pass --trust-pickle\n")
    assert "likely succeed" not in err


def test_trust_pickle_reads_a_trusted_pickle(tiny, tmp_path, capsys):
    from git_scratch import cli

    src = pickled_checkpoint(tiny, tmp_path)
    assert cli.main(["convert", src, tmp_path / "out", "--trust-pickle"]) == 0
    assert torch.equal(logits(git_scratch.load(tmp_path / "out"), tiny), logits(tiny.ours, tiny))


def test_load_of_an_unconverted_checkpoint_is_its_conversion(tiny):
    model, before = git_scratch.load(tiny.hf_dir, device="cpu"), sorted(p.name for p in tiny.hf_dir.iterdir())
    converted = git_scratch.load(tiny.our_dir, device="cpu")
    assert model.state_dict().keys() == converted.state_dict().keys()
    assert all(torch.equal(a, converted.state_dict()[k]) for k, a in model.state_dict().items())
    assert sorted(p.name for p in tiny.hf_dir.iterdir()) == before  # converted into the cache, not beside it


def test_to_hf_refuses_parameters_with_no_transformers_key_of_the_same_meaning(tmp_path, monkeypatch):
    """An RMSNorm in the decoder blocks (weights only, the same names and shapes as the LayerNorms'): the
    export would write LayerNorm weights without biases, which transformers would run as LayerNorms."""
    from git_scratch.decoder import TextBlock

    init = TextBlock.__init__

    def with_rms_norm(self, config):
        init(self, config)
        self.ln_1 = torch.nn.RMSNorm(config.dim, eps=config.ln_eps)

    monkeypatch.setattr(TextBlock, "__init__", with_rms_norm)
    model = git_scratch.GIT(git_scratch.GitConfig.preset("tiny"))
    git_scratch.save(model, tmp_path / "rms")
    with pytest.raises(ConversionError, match=r"2 parameter\(s\) have no transformers key of the same meaning "
                                              r".*blocks.0.ln_1.weight \(of a RMSNorm without a bias\), "
                                              r"blocks.1.ln_1.weight"):
        convert(tmp_path / "rms", tmp_path / "hf", to_hf=True)
    assert not (tmp_path / "hf").exists()
