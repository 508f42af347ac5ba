"""export/ and `git-scratch export-onnx`: a checkpoint as three ONNX graphs with an explicit KV cache, in a folder
that is itself a checkpoint. onnxruntime under git_scratch's own searches gives git_scratch's ids, greedy and
beam, on a converted random checkpoint and on the shipped demo model; the graphs' axes are dynamic; the command
line's records from the exported folder are the torch checkpoint's; what cannot run on onnxruntime is refused.

Exporting costs ~20 s a checkpoint on one core, so each module fixture exports once."""

import contextlib
import io
import json

import onnx
import onnxruntime
import pytest
import torch

from _cli_helpers import build_checkpoint, in_process, one_error, photo, records
from git_scratch import GIT, GitConfig, init_weights, load
from git_scratch.cli import main as cli_main
from git_scratch.data import shapes
from git_scratch.export import GRAPH_FILES, MANIFEST
from git_scratch.export.onnx import export_checkpoint, export_graphs
from git_scratch.export.runtime import OnnxCached, OnnxGIT
from git_scratch.generation.decoders import Cached
from git_scratch.generation.generate import generate

# float32 logits from onnxruntime against torch's: the same products summed in another order (onnxruntime's
# MLAS GEMMs and fused LayerNorm/Softmax/GELU kernels against torch's), a few units in the last place of each
# sum. Measured here: 4.8e-7 (random "words" checkpoint, logits up to ~5) and 4.8e-6 (demo model, logits up to
# ~40), i.e. ~1e-7 of the largest logit, float32's epsilon. The bound, 1e-5 of the largest logit, leaves 100x;
# a real bug (a wrong slot, a lost bias, a stale cache row) moves logits by a sizeable fraction of their range.
RELATIVE = 1e-5
# mean log-probabilities (the records' `score`) then agree to well within 1e-5 too: a few ulp per token
SCORE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    """(torch checkpoint, its HF original, its export): the random "words" shape (real BERT vocabulary,
    initializer_range 0.1 so that the image matters), exported by the command line (its stderr kept)."""
    root = tmp_path_factory.mktemp("words")
    hf_dir, ckpt = build_checkpoint(root)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli_main(["export-onnx", str(ckpt), str(root / "onnx")])
    assert rc == 0, err.getvalue()
    return ckpt, hf_dir, root / "onnx", err.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(torch model, OnnxGIT) of the shipped demo model, exported through the Python API."""
    out = tmp_path_factory.mktemp("demo") / "onnx"
    model = export_checkpoint(shapes.CHECKPOINT, out, log=lambda line: None)
    return model, OnnxGIT(out)


def pixels_of(model, n, seed=0):
    cfg = model.config
    return torch.randn(n, 3, cfg.vision.image_size, cfg.vision.image_size, generator=torch.Generator().manual_seed(seed))


def same_generation(a, b):
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.lengths, b.lengths)
    assert (a.scores - b.scores).abs().max() <= SCORE_TOLERANCE * max(1.0, float(a.scores.abs().max()))


def test_export_writes_checked_graphs_and_a_checkpoint_folder(words):
    ckpt, _, out, err = words
    for name in GRAPH_FILES:
        onnx.checker.check_model(str(out / name), full_check=True)
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["graphs"]) == set(GRAPH_FILES)
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json", "vocab.txt"):
        assert (out / name).read_bytes() == (ckpt / name).read_bytes()
    assert "max |logit difference| onnxruntime vs torch:" in err and "Traceback" not in err
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".onnx.")]  # the work folder was renamed


def test_the_decoder_step_writes_new_keys_without_rewriting_the_whole_cache(words):
    """Each layer's new text keys/values go into that layer's cache alone (ScatterND). Written into the one
    text_kv tensor, each write was a ScatterElements over the whole cache, and the step 5x slower (graphs.py)."""
    _, _, out, _ = words
    ops = [node.op_type for node in onnx.load(str(out / "decoder_step.onnx"), load_external_data=False).graph.node]
    assert "ScatterElements" not in ops and "ScatterND" in ops


@pytest.mark.parametrize("options", [dict(max_new_tokens=8), dict(max_new_tokens=8, num_beams=3),
                                     dict(max_new_tokens=8, num_beams=3, num_return_sequences=2),
                                     dict(compat="original", num_beams=2, max_length=12)],
                         ids=["greedy", "beam3", "beam3-return2", "original-beam"])
def test_onnxruntime_ids_equal_git_scratch_on_a_random_checkpoint(words, options):
    ckpt, _, out, _ = words
    torch_model, ort_model = load(ckpt), OnnxGIT(out)
    px = pixels_of(torch_model, 3)
    same_generation(generate(torch_model, px, return_scores=True, **options),
                    generate(ort_model, px, return_scores=True, **options))


def test_prompts_of_different_lengths_decode_alike(words):
    """Left-padded questions of 2 to 5 tokens, one per image, greedy and beam: right-padded into text slots."""
    ckpt, _, out, _ = words
    torch_model, ort_model = load(ckpt), OnnxGIT(out)
    px, prompts = pixels_of(torch_model, 3, seed=1), [[101, 2054], [101, 2054, 2003, 2023, 1029], [101, 2129, 2116]]
    for beams in (1, 2):
        same_generation(generate(torch_model, px, prompts, max_new_tokens=6, num_beams=beams, return_scores=True),
                        generate(ort_model, px, prompts, max_new_tokens=6, num_beams=beams, return_scores=True))
    # images with 1, 3 and 2 questions: each image through the prefill graph once, its questions read copies
    many, counts = [prompts[0], *prompts, prompts[2], prompts[0]], [1, 3, 2]
    for beams in (1, 2):
        same_generation(generate(torch_model, px, many, prompts_per_image=counts, max_new_tokens=6, num_beams=beams,
                                 return_scores=True),
                        generate(ort_model, px, many, prompts_per_image=counts, max_new_tokens=6, num_beams=beams,
                                 return_scores=True))


def two_steps(model, make, pixels, ids):
    """Logits (2R, V): the prompts' last tokens, then one decode step, through decoder `make`."""
    image = model.encode_image(pixels)
    R, T = ids.shape
    dec = make(model, image, R, model.mask(image.shape[1], T + 1))
    lengths = torch.full((R,), T)
    return torch.cat([dec.prefill(ids, lengths), dec.decode_step(ids[:, 0], lengths)])


@pytest.mark.parametrize("images, rows_per_image, prompt", [(1, 1, 2), (3, 2, 5)])
def test_logits_match_torch_through_one_export_at_any_batch_and_length(demo, images, rows_per_image, prompt):
    """The dynamic axes: images, rows per image and prompt length all differ from the export's example."""
    model, ort_model = demo
    px = pixels_of(model, images, seed=images)
    g = torch.Generator().manual_seed(prompt)
    ids = torch.randint(4, model.config.text.vocab_size, (images * rows_per_image, prompt), generator=g)
    with torch.no_grad():
        expected = two_steps(model, Cached, px, ids)
    got = two_steps(ort_model, OnnxCached, px, ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= RELATIVE * expected.abs().max()


def test_onnxruntime_ids_equal_git_scratch_on_the_demo_model(demo):
    model, ort_model = demo
    proc = shapes.processor()
    seeds = range(2_000_000_000, 2_000_000_004)
    px = torch.cat([proc(images=[shapes.sample(s)[0]]).pixel_values for s in seeds])
    question = torch.from_numpy(proc.encode_text("what colour is the shape?")[0])  # (1, T), [CLS] first
    for options in (dict(), dict(num_beams=3), dict(input_ids=question)):
        same_generation(generate(model, px, return_scores=True, **options),
                        generate(ort_model, px, return_scores=True, **options))


def test_a_video_checkpoints_encoder_graph_adds_each_frames_time(tmp_path):
    """Video checkpoints export their encoder with the temporal embeddings: (Bi, F, 3, H, W) in, F frames' tokens out.
    (Only this graph: the other two are the image ones with N = F x the tokens of a frame.)"""
    cfg = GitConfig.preset("tiny-video")
    g = torch.Generator().manual_seed(0)
    model = init_weights(GIT(cfg), std=0.1, generator=g).eval()
    for time_embed in model.img_proj.temporal_embed:  # init leaves them 0, which would hide a frame's time lost
        time_embed.data.normal_(std=0.1, generator=g)
    export_graphs(model, tmp_path, log=lambda line: None, names=("image_encoder.onnx",))
    session = onnxruntime.InferenceSession(str(tmp_path / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    for images in (1, 2):
        px = torch.randn(images, cfg.n_frames, 3, cfg.vision.image_size, cfg.vision.image_size)
        with torch.no_grad():
            expected = model.encode_image(px)
        (got,) = session.run(None, {"pixel_values": px.numpy()})
        assert got.shape == (images, cfg.n_img_tokens, cfg.text.dim)  # every frame's tokens, frame after frame
        # image tokens up to ~3 after the LayerNorm: float32 reordering leaves ~1e-6; without the frames' times
        # they move by 0.34 (measured), so 1e-4 tells the two apart by far
        assert abs(got - expected.numpy()).max() < 1e-4


def test_caption_and_vqa_records_from_the_export_are_the_checkpoints(words, capsys):
    ckpt, _, out, _ = words
    images = [photo("astronaut.png"), photo("chelsea.png"), photo("coffee.png")]
    for command in (["caption", *images, "--num-beams", "2"], ["vqa", *images, "-q", "what is it?", "-q", "why?"]):
        got = {}
        for c in (ckpt, out):
            rc, stdout, err = in_process(capsys, *command, "--json", "--max-new-tokens", "6", "-c", c)
            assert rc == 0, err
            got[c] = records(stdout)
        assert len(got[ckpt]) == len(got[out]) == len(images) * (1 if command[0] == "caption" else 2)
        for a, b in zip(got[ckpt], got[out]):
            assert {k: v for k, v in a.items() if k not in ("score", "settings")} == \
                   {k: v for k, v in b.items() if k not in ("score", "settings")}
            assert a["score"] == pytest.approx(b["score"], abs=SCORE_TOLERANCE)
            # the settings differ in the fingerprint alone: the export is a checkpoint of its own (README)
            assert {**a["settings"], "checkpoint": None} == {**b["settings"], "checkpoint": None}
            assert a["settings"]["checkpoint"] != b["settings"]["checkpoint"]


def test_results_from_torch_do_not_resume_an_onnx_run(words, tmp_path, capsys):
    ckpt, _, out, _ = words
    log = tmp_path / "results.jsonl"
    assert in_process(capsys, "caption", photo("astronaut.png"), "--max-new-tokens", "3", "-c", ckpt, "-o", log)[0] == 0
    rc, _, err = in_process(capsys, "caption", photo("astronaut.png"), "--max-new-tokens", "3", "-c", out, "-o", log)
    assert rc == 2 and "checkpoint fingerprint" in one_error(err)


@pytest.mark.parametrize("flags, message", [(["--compile"], "--compile is for torch checkpoints"),
                                            (["--quantize", "int8"], "--quantize int8 is for torch checkpoints"),
                                            (["--dtype", "bfloat16"], "--dtype bfloat16 is for torch checkpoints")])
def test_what_onnxruntime_cannot_run_is_refused(words, capsys, flags, message):
    _, _, out, _ = words
    rc, stdout, err = in_process(capsys, "caption", photo("astronaut.png"), "-c", out, *flags)
    assert rc == 2 and message in one_error(err) and not stdout


def test_export_usage_errors(words, tmp_path, capsys, monkeypatch):
    ckpt, hf_dir, out, _ = words
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    cases = [((tmp_path / "nope", tmp_path / "a"), "no such checkpoint directory"),
             ((hf_dir / "config.json", tmp_path / "b"), "is a file; pass the checkpoint directory"),
             ((out, tmp_path / "c"), "is an ONNX export already"),
             ((ckpt, tmp_path / "full"), "not empty"),
             ((ckpt, tmp_path / "d", "--opset", "11"), "--opset 11"),
             ((ckpt, ckpt / "inside"), "inside CKPT")]
    for args, message in cases:
        rc, _, err = in_process(capsys, "export-onnx", *args)
        assert rc == 2 and message in one_error(err), (args, err)
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine" and not (tmp_path / "a").exists()
    from git_scratch.cli import export_onnx

    monkeypatch.setattr(export_onnx, "_installed", lambda module: module != "onnxruntime")
    rc, _, err = in_process(capsys, "export-onnx", ckpt, tmp_path / "e")
    assert rc == 2 and "pip install 'git_scratch[onnx]'" in one_error(err)


@pytest.mark.parametrize("method", ["rank", "trie"])
def test_classify_runs_an_export_as_it_runs_the_torch_checkpoint(words, tmp_path, capsys, method):
    """rank needs only the decoder's logits, teacher-forced step by step through the graphs; trie decodes."""
    ckpt, _, out, _ = words
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\na cat\na dog\nrocket\n")
    search = ("--method", "trie", "--num-beams", "3") if method == "trie" else ()
    args = ("classify", photo("astronaut.png"), photo("coffee.png"), "--labels", labels, "--json", "--top-k", "3",
            "-q", "what is it?", *search)
    got = []
    for checkpoint in (ckpt, out):
        rc, stdout, err = in_process(capsys, *args, "-c", checkpoint)
        assert rc == 0, err
        got.append([json.loads(line) for line in stdout.splitlines()])
    torch_recs, onnx_recs = got
    assert len(torch_recs) == 2
    for t, o in zip(torch_recs, onnx_recs, strict=True):
        assert t["labels"] == o["labels"]
        # summed log-probabilities of 1-4 tokens (a label and its [SEP]): the few ulp per token that bound the
        # records' mean scores above bound the sum too, relative to its size; a wrong graph moves it by ~1e-1
        largest = max(1.0, *(abs(s) for s in t["scores"]))
        assert all(abs(a - b) <= SCORE_TOLERANCE * largest for a, b in zip(t["scores"], o["scores"], strict=True))


def test_explain_refuses_an_export_before_any_work(words, tmp_path, capsys):
    _, _, out, _ = words
    picture = tmp_path / "explain.png"
    rc, stdout, err = in_process(capsys, "explain", photo("astronaut.png"), "-c", out, "--out", picture)
    assert rc == 2 and not stdout and not picture.exists()
    assert one_error(err) == f"error: --checkpoint {out}: explain needs the torch checkpoint: an ONNX export has no " \
                             "attention maps"
