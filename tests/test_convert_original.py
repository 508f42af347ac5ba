"""The original GIT's checkpoints (github.com/microsoft/GenerativeImage2Text, model.pt) -> git_scratch.

No original checkpoint can be downloaded here, so each test writes one: a random transformers GIT, its
weights renamed into the original's layout by this file's own small map (not the converter's table): OpenAI
CLIP names under `image_encoder.` with q, k, v packed into one in_proj, BERT names under `textual.`, the
unused CLIP projection `image_encoder.proj`, the head copy `textual.output.weight`, `module.` prefixes, all
saved as `{"model": state_dict}`. Then the real command line converts it.
"""

import copy
import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import git_scratch
from reference import SHAPES
from git_scratch.convert import ConversionError, convert
from git_scratch.cli.main import main as cli_main
from git_scratch.convert.convert import NAME_MAP, rename

# Same reasoning as test_parity.py: both sides compute in float32 in a different order (SDPA with a bool mask
# vs transformers' explicit softmax), a few ulps per op, below 1e-6 of the output's scale through these
# layers; a wrong or swapped tensor moves the logits by 1e-2 or more.
REL = 1e-5

VIT = r"git\.image_encoder\.vision_model\."
# transformers name (regex) -> the original's name. Each key matches exactly one row; q/k/v are packed below.
TO_ORIGINAL = [
    (VIT + r"embeddings\.patch_embedding\.weight", "image_encoder.conv1.weight"),
    (VIT + r"embeddings\.class_embedding", "image_encoder.class_embedding"),
    (VIT + r"embeddings\.position_embedding\.weight", "image_encoder.positional_embedding"),
    (VIT + r"pre_layrnorm\.", "image_encoder.ln_pre."),
    (VIT + r"post_layernorm\.", "image_encoder.ln_post."),
    (VIT + r"encoder\.layers\.(\d+)\.layer_norm([12])\.", r"image_encoder.transformer.resblocks.\1.ln_\2."),
    (VIT + r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"image_encoder.transformer.resblocks.\1.attn.out_proj."),
    (VIT + r"encoder\.layers\.(\d+)\.mlp\.fc1\.", r"image_encoder.transformer.resblocks.\1.mlp.c_fc."),
    (VIT + r"encoder\.layers\.(\d+)\.mlp\.fc2\.", r"image_encoder.transformer.resblocks.\1.mlp.c_proj."),
    (r"git\.visual_projection\.visual_projection\.", "textual.visual_projection."),
    (r"git\.img_temporal_embedding\.", "img_temperal_embedding."),
    (r"git\.embeddings\.word_embeddings\.", "textual.embedding.words."),
    (r"git\.embeddings\.position_embeddings\.", "textual.embedding.positions."),
    (r"git\.embeddings\.LayerNorm\.", "textual.embedding.layer_norm."),
    (r"git\.encoder\.layer\.", "textual.transformer.encoder.layer."),  # BERT's own names below this
    (r"output\.", "textual.output."),
]
PACKED = re.compile(VIT + r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")


def original_layout(hf_state: dict) -> dict:
    """transformers GIT weights -> the original's state dict, as its CaptioningModel.state_dict() names them."""
    sd, packed = {}, {}
    for key, value in hf_state.items():
        if m := PACKED.fullmatch(key):
            packed.setdefault((int(m[1]), m[3]), {})[m[2]] = value
            continue
        hits = [re.sub("^" + pat, rep, key) for pat, rep in TO_ORIGINAL if re.match(pat, key)]
        assert len(hits) == 1, (key, hits)
        sd[hits[0]] = value
    for (i, kind), qkv in packed.items():  # nn.MultiheadAttention's in_proj: rows q, then k, then v
        sd[f"image_encoder.transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    dv = hf_state[VIT.replace("\\", "") + "pre_layrnorm.weight"].shape[0]
    sd["image_encoder.proj"] = torch.randn(dv, 16)  # CLIP's image-text projection: GIT never uses it
    return sd


def scrambled_transformers(name: str, seed: int = 0):
    """A random transformers GIT of a tests/reference.py shape with *every* parameter random: LayerNorms, the
    head bias and temporal embeddings too (initialised to 1, 0, 0 they would not show a swapped or lost tensor).
    Its head is untied (tie_word_embeddings=False, as in published configs)."""
    from transformers import GitConfig, GitForCausalLM

    torch.manual_seed(seed)
    hf = GitForCausalLM(GitConfig(**SHAPES[name])).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf


def tied(hf):
    """The fair reference for an original checkpoint: the original builds its head tied to the word embedding
    (decoder.py:503-505) and its loader never reads textual.output.weight, so the model a checkpoint describes is
    this transformers GIT with its head weight *replaced by* the word embedding, its own head bias kept. The file
    still carries hf's own, different output.weight: that proves it is ignored. Its text embeddings' LayerNorm
    takes eps 1e-8 (decoder.py:61), not transformers' 1e-12."""
    ref = copy.deepcopy(hf)
    ref.git.embeddings.LayerNorm.eps = 1e-8
    with torch.no_grad():
        ref.output.weight.copy_(ref.git.embeddings.word_embeddings.weight)
    return ref


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("orig")
    hf = scrambled_transformers("tiny")
    hf.config.to_json_file(root / "config.json")
    return hf, root / "config.json"


def write_original(hf, path, prefix: str = "", mutate=None, wrap=dict):
    sd = {prefix + k: v for k, v in original_layout(hf.state_dict()).items()}
    if mutate:
        mutate(sd)
    torch.save({"model": wrap(sd)}, path)
    return path


def inputs(cfg, batch=2, length=7, seed=3):
    g = torch.Generator().manual_seed(seed)
    frames = (cfg.n_frames,) if cfg.n_frames else ()
    px = torch.randn(batch, *frames, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    ids = torch.randint(3, cfg.text.vocab_size, (batch, length), generator=g)
    ids[:, 0] = cfg.text.bos_id
    return px, ids


def rel_err(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def assert_matches_tied(out_dir, hf):
    """Every tensor equal to transformers' (the head: the word embedding) and logits within REL."""
    state, hf_state = load_file(out_dir / "model.safetensors"), hf.state_dict()
    names = rename(hf_state, NAME_MAP)
    for k, v in hf_state.items():
        want = hf_state["git.embeddings.word_embeddings.weight"] if k == "output.weight" else v
        assert torch.equal(state[names[k]], want), k
    model = git_scratch.load(out_dir)
    assert model.config.text.tie_embeddings and model.lm_head.weight is model.embed.tok_embed.weight
    assert model.embed.ln.eps == 1e-8 and all(b.ln_1.eps == b.ln_2.eps == 1e-12 for b in model.blocks)
    px, ids = inputs(model.config)
    with torch.no_grad():
        ours = model(px, ids).logits
        ref = tied(hf)(pixel_values=px, input_ids=ids).logits[:, -ids.shape[1]:]  # transformers: image rows too
    assert rel_err(ours, ref) < REL


@pytest.mark.parametrize("prefix", ["", "module.", "module.module."])
def test_an_original_checkpoint_converts_and_matches_transformers_with_a_tied_head(tiny, tmp_path, prefix, capsys):
    hf, config = tiny
    src = write_original(hf, tmp_path / "model.pt", prefix)
    assert cli_main(["convert", str(src), str(tmp_path / "out"), "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"converted {src} -> {tmp_path / 'out'} (original GIT -> git_scratch): ")
    assert "  LM head tied to the word embedding, as the original builds it\n" in err
    assert "  dropped (unused by GIT): image_encoder.proj, textual.output.weight\n" in err
    # this file's head copy is hf's own untied weight, not the word embedding: said, and not used
    assert ("warning: textual.output.weight differs from textual.embedding.words.weight; the head uses the word "
            "embedding, as the original's loader does (it never reads textual.output.weight)\n") in err
    assert_matches_tied(tmp_path / "out", hf)


def test_a_head_copy_equal_to_the_word_embedding_converts_without_a_warning(tiny, tmp_path):
    """What the original really saves: a tied model's state_dict lists the shared weight under both names."""
    hf, config = tiny

    def tie(sd):
        sd["textual.output.weight"] = sd["textual.embedding.words.weight"]

    summary = convert(write_original(hf, tmp_path / "model.pt", mutate=tie), tmp_path / "out", config=config)
    assert not any("differs" in w for w in summary["warnings"])
    assert_matches_tied(tmp_path / "out", hf)


def test_a_preset_gives_the_shape_and_the_same_weights(tiny, tmp_path):
    hf, config = tiny
    src = write_original(hf, tmp_path / "model.pt")
    convert(src, tmp_path / "a", config=config)
    summary = convert(src, tmp_path / "b", preset="tiny")  # configs/tiny.json: the same shape
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["text"]["tie_embeddings"] is True
    assert summary["copied"] == [] and "no preprocessing settings" in summary["warnings"][-1]


def test_tokenizer_and_preprocessing_files_beside_the_config_come_along(tiny, tmp_path):
    hf, config = tiny
    beside = tmp_path / "hf"
    beside.mkdir()
    (beside / "config.json").write_text(config.read_text())
    (beside / "vocab.txt").write_text("[PAD]\n[CLS]\n[SEP]\n[UNK]\n")  # the tiny config's pad, bos, eos: 0, 1, 2
    (beside / "preprocessor_config.json").write_text("{}")
    summary = convert(write_original(hf, tmp_path / "model.pt"), tmp_path / "out", config=beside / "config.json")
    assert summary["copied"] == ["vocab.txt", "preprocessor_config.json"]
    assert (tmp_path / "out" / "vocab.txt").is_file()


def test_a_video_checkpoint_keeps_its_temporal_embeddings(tmp_path):
    hf = scrambled_transformers("tiny-video")
    hf.config.to_json_file(tmp_path / "config.json")
    src = write_original(hf, tmp_path / "model.pt", "module.")
    assert cli_main(["convert", str(src), str(tmp_path / "out"), "--config", str(tmp_path / "config.json")]) == 0
    assert_matches_tied(tmp_path / "out", hf)  # 3 frames, each shifted by its own (random) temporal embedding


def test_the_command_line_converts_in_a_fresh_process(tiny, tmp_path):
    hf, config = tiny
    src = write_original(hf, tmp_path / "model.pt", "module.")
    r = subprocess.run([sys.executable, "-m", "git_scratch.convert", str(src), str(tmp_path / "out"), "--config",
                        str(config), "--dtype", "bfloat16"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {v.dtype for v in load_file(tmp_path / "out" / "model.safetensors").values()} == {torch.bfloat16}


# ---------------------------------------------------------------- refusals, each with its message
class PickledState(dict):
    """A state dict in a class of its own: a pickle that holds more than tensors and plain containers."""


def test_a_pickle_with_more_than_tensors_is_refused_unless_trusted(tiny, tmp_path, capsys):
    hf, config = tiny
    src = write_original(hf, tmp_path / "model.pt", wrap=PickledState)
    assert cli_main(["convert", str(src), str(tmp_path / "out"), "--config", str(config)]) == 2  # 2 from both entry points
    assert capsys.readouterr().err == (
        f"error: {src}: holds more than tensors (it names the Python object {__name__}.PickledState), and "
        "unpickling it could run any code it carries; only for a file from a source you trust, pass --trust-pickle\n")
    assert not (tmp_path / "out").exists()
    assert cli_main(["convert", str(src), str(tmp_path / "out"), "--config", str(config), "--trust-pickle"]) == 0
    assert_matches_tied(tmp_path / "out", hf)


def expect_failure(src, dst, match, **kw):
    with pytest.raises(ConversionError, match=match):
        convert(src, dst, **kw)
    assert not dst.exists(), "a failed conversion must leave no destination behind"


def test_a_missing_tensor_is_named_by_both_names(tiny, tmp_path):
    hf, config = tiny

    def drop(sd):
        del sd["module.textual.transformer.encoder.layer.1.output.dense.bias"]
        del sd["module.image_encoder.transformer.resblocks.0.attn.in_proj_bias"]

    src = write_original(hf, tmp_path / "model.pt", "module.", mutate=drop)
    packed = "original image_encoder.transformer.resblocks.0.attn.in_proj_bias"
    expect_failure(src, tmp_path / "out", re.escape(
        "missing 4 git_scratch parameter(s): blocks.1.mlp.fc2.bias (original textual.transformer.encoder.layer.1."
        f"output.dense.bias), vision.blocks.0.attn.k_proj.bias ({packed}), vision.blocks.0.attn.q_proj.bias "
        f"({packed}), vision.blocks.0.attn.v_proj.bias ({packed})") + "$", config=config)


def test_an_extra_tensor_is_named(tiny, tmp_path):
    hf, config = tiny
    extra = {"module.textual.transformer.encoder.layer.0.rotary": torch.ones(2)}
    src = write_original(hf, tmp_path / "model.pt", "module.", mutate=lambda sd: sd.update(extra))
    expect_failure(src, tmp_path / "out", r"1 source key\(s\) match no row of the name table: "
                                          r"textual\.transformer\.encoder\.layer\.0\.rotary$", config=config)


def test_a_key_with_and_without_module_prefix_is_refused(tiny, tmp_path):
    hf, config = tiny
    src = write_original(hf, tmp_path / "model.pt", mutate=lambda sd: sd.update(
        {"module.image_encoder.ln_pre.bias": sd["image_encoder.ln_pre.bias"]}))
    expect_failure(src, tmp_path / "out", r"two source keys become image_encoder\.ln_pre\.bias once 'module\.' "
                                          r"prefixes are stripped$", config=config)


def test_a_model_pt_needs_its_shape_and_a_directory_takes_none(tiny, tmp_path):
    hf, config = tiny
    src = write_original(hf, tmp_path / "model.pt")
    expect_failure(src, tmp_path / "out", r"model\.pt is a file, read as the original GIT's model\.pt: give its "
                                          r"shape with --config CONFIG\.json \(a Hugging Face GIT config\.json\) "
                                          r"or --preset NAME$")
    expect_failure(tmp_path, tmp_path / "out", r"is a directory: --config and --preset are for the original",
                   config=config)
    expect_failure(src, tmp_path / "out", r"no preset 'git-huge'; available: ", preset="git-huge")
    expect_failure(src, tmp_path / "out", r"cfg\.json: no such config file", config=tmp_path / "cfg.json")


def test_a_file_that_is_not_a_checkpoint_is_named(tiny, tmp_path):
    hf, config = tiny
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "notes.pt")
    expect_failure(tmp_path / "notes.pt", tmp_path / "out", re.escape(
        "notes.pt: not an original GIT checkpoint (expected {'model': state_dict}, found a dict with keys epoch, lr)")
        + "$", config=config)


# ---------------------------------------------------------------- transformers' legacy spelling
def test_a_hugging_face_video_checkpoint_with_the_legacy_temperal_spelling_converts(tmp_path):
    """transformers' own converter wrote git.img_temperal_embedding.{t}; transformers now ignores those keys."""
    hf = scrambled_transformers("tiny-video")
    hf.save_pretrained(tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    legacy = {k.replace("img_temporal_embedding", "img_temperal_embedding"): v.clone() for k, v in state.items()}
    assert "git.img_temperal_embedding.2" in legacy
    save_file(legacy, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    convert(tmp_path / "hf", tmp_path / "out")
    ours = load_file(tmp_path / "out" / "model.safetensors")
    for t in range(3):
        assert torch.equal(ours[f"img_proj.temporal_embed.{t}"], state[f"git.img_temporal_embedding.{t}"])
    # both spellings at once: two sources for one parameter
    save_file({**state, **legacy}, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    expect_failure(tmp_path / "hf", tmp_path / "again", r"two source keys land on one target: "
                                                        r"img_proj\.temporal_embed\.0, img_proj\.temporal_embed\.1")


def test_back_to_hugging_face_the_embedding_eps_is_named_as_lost(tiny, tmp_path):
    """transformers has one text LayerNorm eps: an original checkpoint's 1e-8 cannot go along, and says so."""
    hf, config = tiny
    convert(write_original(hf, tmp_path / "model.pt"), tmp_path / "ours", config=config)
    summary = convert(tmp_path / "ours", tmp_path / "hf", to_hf=True)
    assert any(w.startswith("text.embed_ln_eps 1e-08 has no Hugging Face form") for w in summary["warnings"])
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["layer_norm_eps"] == 1e-12
