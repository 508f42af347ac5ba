"""Config: every computation-changing field read from Hugging Face's config.json, and written back."""

import json

import pytest

from git_scratch import GIT, GitConfig
from git_scratch.config import PRESET_DIR
from reference import SHAPES
from git_scratch.convert import config_from_hf, config_to_hf


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_hf_config_round_trips_through_transformers(name):
    from transformers import GitConfig as HFConfig

    hf = HFConfig(**SHAPES[name])
    ours = config_from_hf(hf.to_dict())
    back = HFConfig(**config_to_hf(ours))
    assert config_from_hf(back.to_dict()) == ours
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                "layer_norm_eps", "vocab_size", "max_position_embeddings", "num_image_with_embedding",
                "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings"):
        assert getattr(back, key) == getattr(hf, key), key
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                "layer_norm_eps", "image_size", "patch_size", "num_channels"):
        assert getattr(back.vision_config, key) == getattr(hf.vision_config, key), key


def test_odd_fields_are_honoured():
    cfg = config_from_hf({"model_type": "git", **SHAPES["odd"]})
    assert (cfg.vision.act, cfg.vision.ln_eps, cfg.text.act, cfg.text.ln_eps) == ("gelu_new", 1e-6, "relu", 1e-7)
    model = GIT(cfg)
    assert model.blocks[0].ln_1.eps == 1e-7 and model.vision.blocks[0].ln_1.eps == 1e-6
    assert model.img_proj.ln.eps == 1e-6  # NB: the projection LayerNorm takes the vision epsilon


@pytest.mark.parametrize("bad", [{"hidden_act": "gelu_fast2"}, {"vision_config": {"hidden_act": "mystery"}}])
def test_unknown_activation_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="unknown activation"):
        config_from_hf({"model_type": "git", **bad})


def test_other_model_type_is_refused():
    with pytest.raises(ValueError, match="not a GIT config"):
        config_from_hf({"model_type": "blip"})


@pytest.mark.parametrize("path", sorted(PRESET_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_preset_loads_and_names_its_source(path):
    raw = json.loads(path.read_text())
    assert raw["source"]
    cfg = GitConfig.preset(path.stem)
    assert cfg == GitConfig.from_dict(cfg.to_dict())
    # shape sanity: N = frames x (1 + (image/patch)^2)
    assert cfg.n_img_tokens == (cfg.n_frames or 1) * (1 + (cfg.vision.image_size // cfg.vision.patch_size) ** 2)


def test_presets_match_published_shapes():
    assert GitConfig.preset("git-base-coco").n_img_tokens == 197
    assert GitConfig.preset("git-large-coco").n_img_tokens == 257
    assert GitConfig.preset("git-base-vatex").n_img_tokens == 6 * 197
    assert GitConfig.preset("git-base-vqav2").vision.image_size == 480


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="git-base-coco"):
        GitConfig.preset("git-huge")


def test_a_hugging_face_config_json_is_refused_with_the_convert_command(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "git", **SHAPES["tiny"]}))
    with pytest.raises(ValueError, match=r"config\.json is a Hugging Face config\.json; convert the checkpoint"):
        GitConfig.from_json(path)


def test_set_overrides_are_checked_against_the_configs_fields():
    cfg = GitConfig.preset("shapes-tiny").with_overrides(["text.norm=pre", "text.n_layers=2", "n_frames=3",
                                                          "text.embed_ln_eps=none", "text.tie_embeddings=true"])
    assert (cfg.text.norm, cfg.text.n_layers, cfg.n_frames, cfg.text.embed_ln_eps, cfg.text.tie_embeddings) == \
        ("pre", 2, 3, None, True)
    assert GitConfig.preset("shapes-tiny").text.norm == "post"  # a copy: the preset is untouched
    with pytest.raises(ValueError, match=r"--set 'text.nrm=pre': not FIELD=VALUE of a config field"):
        cfg.with_overrides(["text.nrm=pre"])
    with pytest.raises(ValueError, match=r"--set 'text.n_layers=two': 'two' is not a int"):
        cfg.with_overrides(["text.n_layers=two"])


def test_train_builds_its_model_from_a_config_file_with_overrides(tmp_path):
    import torch

    from git_scratch.training.loop import TrainRun, prepare

    GitConfig.preset("shapes-tiny").save(tmp_path / "mine.json")
    run = TrainRun(data="shapes", out=str(tmp_path / "run"), config=str(tmp_path / "mine.json"),
                   overrides=["text.norm=pre", "text.n_layers=2"], shapes_samples=4)
    model = prepare(run, torch.device("cpu"))[0]
    assert model.config.text.norm == "pre" and len(model.blocks) == 2 and model.ln_f is not None
    with pytest.raises(ValueError, match="--config and --set shape a new model; --init fine-tunes"):
        TrainRun(data="shapes", out=str(tmp_path / "r2"), init=str(tmp_path), overrides=["text.norm=pre"])
