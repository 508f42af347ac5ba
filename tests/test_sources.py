"""A model is named one way everywhere: sources.resolve(NAME) for load, Processor.from_pretrained and convert.

The hub side never touches a network: a real huggingface_hub cache is laid out in a temporary folder as the
library writes it (blobs/<sha256>, refs/main, snapshots/<commit>/<file> -> ../../blobs/<sha256>) and read by a
subprocess started with HF_HUB_CACHE and HF_HUB_OFFLINE=1, which huggingface_hub reads when it is imported.
The hub's own error answers come from a small HTTP server on 127.0.0.1 (HF_ENDPOINT). Logits are compared
with torch.equal: the same converter writes the same weights, and the same process computes both sides.
"""

import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import git_scratch
from _cli_helpers import build_checkpoint, cli_env
from git_scratch.data import shapes
from git_scratch.export import MANIFEST
from git_scratch.sources import DEMO, processor_dir, resolve
from git_scratch.sources.cache import file_digest

REPO_ID = "owner/tiny"
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40

# Loads each name in a fresh process, runs it on fixed inputs, and says what came of it: one JSON line per name.
SCRIPT = r"""
import json, sys, warnings
import torch
import git_scratch
from git_scratch.sources import resolve

out = sys.argv[1]
for i, name in enumerate(sys.argv[2:]):
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = git_scratch.load(name)
        cfg = model.config
        g = torch.Generator().manual_seed(0)
        px = torch.randn(1, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
        ids = torch.tensor([[cfg.text.bos_id, 5, 6, 7]])
        with torch.no_grad():
            torch.save(model(px, ids).logits, f"{out}/{i}.pt")
        print(json.dumps({"path": str(resolve(name)), "warnings": [str(w.message) for w in caught]}))
    except ValueError as e:
        print(json.dumps({"error": str(e)}))
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(hf_dir, our_dir, hf_dir_b, our_dir_b): two tiny Hugging Face GIT folders with real tokenizer files and
    CLIP preprocessing, different weights (seeds 0 and 1), each converted by the converter."""
    root = tmp_path_factory.mktemp("sources")
    return (*build_checkpoint(root / "a", seed=0), *build_checkpoint(root / "b", seed=1))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """This test's own conversion cache (GIT_SCRATCH_CACHE), so that no test finds another's conversions."""
    monkeypatch.setenv("GIT_SCRATCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def put_in_hub_cache(hub: Path, repo: str, src: Path, commit: str, ref: str | None = "main") -> Path:
    """Lay `src`'s files out as huggingface_hub caches `repo` at `commit` (and points `ref` at it)."""
    store = hub / f"models--{repo.replace('/', '--')}"
    snapshot = store / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (store / "blobs").mkdir(exist_ok=True)
    for f in src.iterdir():
        data = f.read_bytes()
        blob = store / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    if ref:
        (store / "refs").mkdir(exist_ok=True)
        (store / "refs" / ref).write_text(commit)  # huggingface_hub writes the hash with no newline
    return snapshot


def hub_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in cli_env().items() if not k.startswith("HF_")}
    return {**env, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_CACHE": str(tmp_path / "hub"),
            "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "GIT_SCRATCH_CACHE": str(tmp_path / "cache"), **extra}


def load_in_subprocess(tmp_path: Path, *names, prelude: str = "", **env) -> list[dict]:
    """What SCRIPT says of each name; a result's "logits" is the tensor it computed."""
    out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", prelude + SCRIPT, str(out), *map(str, names)], capture_output=True,
                       text=True, timeout=300, env=hub_env(tmp_path, **env))
    assert r.returncode == 0, r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines()]
    for i, result in enumerate(results):
        if "error" not in result:
            result["logits"] = torch.load(out / f"{i}.pt")
    return results


def listing(folder: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


# ---------------------------------------------------------------- hub ids
@pytest.fixture(scope="module")
def hub(checkpoints, tmp_path_factory):
    """(root, first): a hub cache holding owner/tiny and owner/moving at COMMIT_A and owner/bert (a BERT config),
    and what a first load in a fresh process made of the names below (each subprocess costs seconds: one run)."""
    hf_dir, our_dir, *_ = checkpoints
    root = tmp_path_factory.mktemp("hub_run")
    for repo in (REPO_ID, "owner/moving"):
        put_in_hub_cache(root / "hub", repo, hf_dir, COMMIT_A)
    (root / "bert").mkdir()
    (root / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    put_in_hub_cache(root / "hub", "owner/bert", root / "bert", COMMIT_B)
    names = [REPO_ID, f"{REPO_ID}@{COMMIT_A}", our_dir, "owner/moving", "owner/nothing", "owner/bert",
             f"{REPO_ID}@no-such-branch"]
    return root, dict(zip(["id", "at_commit", "converted", "moving", "missing", "bert", "no_revision"],
                          load_in_subprocess(root, *names)))


def test_a_hub_id_loads_what_the_converter_makes_of_it(hub):
    root, first = hub
    by_id, at_commit, converted = first["id"], first["at_commit"], first["converted"]
    assert torch.equal(by_id["logits"], converted["logits"]) and torch.equal(at_commit["logits"], converted["logits"])
    assert Path(by_id["path"]).parent == root / "cache" / "converted" and at_commit["path"] == by_id["path"]
    assert first["moving"]["path"] == by_id["path"]  # the same files: the same conversion
    assert by_id["warnings"] == []  # tokenizer and preprocessing files came along: nothing to say


def test_a_second_load_finds_the_conversion_and_does_not_convert_again(hub):
    root, first = hub
    done = Path(first["id"]["path"])
    folders = [root / "cache", done.parent, done, root / "cache" / "digests"]
    before = [listing(f) for f in folders]
    (second,) = load_in_subprocess(root, REPO_ID)
    assert second["path"] == first["id"]["path"] and torch.equal(second["logits"], first["id"]["logits"])
    # every entry of the cache as it was (inode, mtime; a folder's mtime moves when an entry comes or goes): no
    # conversion, not even one thrown away, and no digest computed again
    assert [listing(f) for f in folders] == before


def test_a_changed_snapshot_converts_again_and_an_old_commit_still_loads(checkpoints, hub):
    *_, hf_dir_b, our_dir_b = checkpoints
    root, first = hub
    old = first["moving"]
    put_in_hub_cache(root / "hub", "owner/moving", hf_dir_b, COMMIT_B)  # a new commit; refs/main moves to it
    new, at_a, ref_b = load_in_subprocess(root, "owner/moving", f"owner/moving@{COMMIT_A}", our_dir_b)
    assert new["path"] != old["path"] and torch.equal(new["logits"], ref_b["logits"])
    assert not torch.equal(new["logits"], old["logits"])  # the seeds differ, so the test could fail
    assert at_a["path"] == old["path"] and torch.equal(at_a["logits"], old["logits"])


def test_hub_errors_are_one_line_each(hub):
    _, first = hub
    missing, bert, no_revision = first["missing"], first["bert"], first["no_revision"]
    assert missing["error"].startswith("owner/nothing: no such folder, and not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE is set" in missing["error"]
    assert bert["error"] == ("owner/bert is not a GIT model: its config.json says model_type 'bert' "
                             "(a GIT checkpoint says 'git')")
    assert no_revision["error"].startswith(f"{REPO_ID}@no-such-branch: no such folder, and not in the Hugging Face "
                                           "cache") and "HF_HUB_OFFLINE" in no_revision["error"]
    assert all("\n" not in r["error"] for r in (missing, bert, no_revision))


def test_convert_takes_a_hub_id(checkpoints, tmp_path):
    hf_dir, our_dir, *_ = checkpoints
    put_in_hub_cache(tmp_path / "hub", REPO_ID, hf_dir, COMMIT_A)
    code = "import sys; from git_scratch.convert import convert; convert(sys.argv[1], sys.argv[2])"
    r = subprocess.run([sys.executable, "-c", code, REPO_ID, str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=300, env=hub_env(tmp_path))  # what `git-scratch convert owner/tiny out` runs
    assert r.returncode == 0, r.stderr
    ours, theirs = load_file(tmp_path / "out" / "model.safetensors"), load_file(our_dir / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in our_dir.iterdir())


class HubAnswers(http.server.BaseHTTPRequestHandler):
    """The hub's error answers: /api/models/<owner>/<name>/... -> (status, X-Error-Code) by repository name."""
    ANSWERS = {"gone": (404, "RepoNotFound"), "gated": (403, "GatedRepo"), "tiny": (404, "RevisionNotFound"),
               "broken": (500, None)}

    def do_GET(self):
        status, code = self.ANSWERS.get(self.path.split("/")[4], (404, "RepoNotFound"))
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubAnswers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_hubs_answers_become_one_line_errors(tmp_path, hub_server):
    gone, gated, no_revision, broken = load_in_subprocess(
        tmp_path, "owner/gone", "owner/gated", "owner/tiny@v9", "owner/broken",
        HF_HUB_OFFLINE="0", HF_ENDPOINT=hub_server, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    assert gone["error"] == ("owner/gone: no such folder, nor a repository on the Hugging Face hub (a private one "
                             "needs HF_TOKEN)")
    assert gated["error"] == "owner/gated: a gated repository; accept its terms on huggingface.co, then set HF_TOKEN"
    assert no_revision["error"] == "owner/tiny: the Hugging Face hub has no revision 'v9' of it"
    assert broken["error"].startswith("owner/broken: cannot reach the Hugging Face hub, and it is not in the cache")
    assert all("\n" not in r["error"] for r in (gone, gated, no_revision, broken))


def test_a_hub_id_without_huggingface_hub_says_which_extra_to_install(tmp_path):
    (result,) = load_in_subprocess(tmp_path, REPO_ID, prelude="import sys; sys.modules['huggingface_hub'] = None\n")
    assert result["error"] == (f"{REPO_ID}: no such folder, and fetching it as a Hugging Face hub id needs "
                               "huggingface_hub: pip install 'git_scratch[hub]'")


# ---------------------------------------------------------------- Hugging Face folders
def test_a_hugging_face_folder_is_converted_into_the_cache_not_beside_it(checkpoints, cache, tmp_path):
    hf_dir, our_dir, *_ = checkpoints
    before = listing(hf_dir)
    px, ids = torch.randn(2, 3, 32, 32), torch.tensor([[101, 2023, 2003], [101, 1037, 4937]])
    with torch.no_grad():
        logits = git_scratch.load(hf_dir)(px, ids).logits
        assert torch.equal(logits, git_scratch.load(our_dir)(px, ids).logits)
    assert listing(hf_dir) == before
    assert resolve(hf_dir).parent == cache / "converted"
    assert Path(git_scratch.Processor.from_pretrained(hf_dir).source) == resolve(hf_dir)
    copy = shutil.copytree(hf_dir, tmp_path / "elsewhere")  # the key is the files' content, not their place
    assert resolve(copy) == resolve(hf_dir) and len(list((cache / "converted").iterdir())) == 1


def test_the_converters_warnings_are_shown_once_when_it_converts(checkpoints, cache, tmp_path):
    hf_dir, *_ = checkpoints
    bare = shutil.copytree(hf_dir, tmp_path / "bare")
    (bare / "preprocessor_config.json").unlink()
    with pytest.warns(UserWarning, match=f"^{bare} has no preprocessing settings"):
        resolve(bare)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve(bare)  # found in the cache: no conversion, nothing to say


def test_a_folder_that_fails_to_convert_leaves_nothing_in_the_cache(checkpoints, cache, tmp_path):
    hf_dir, *_ = checkpoints
    broken = shutil.copytree(hf_dir, tmp_path / "broken")
    state = load_file(broken / "model.safetensors")
    del state["output.weight"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="output.weight") as info:
        git_scratch.load(broken)
    assert "\n" not in str(info.value)
    assert list((cache / "converted").iterdir()) == []  # the temporary sibling is gone too


def test_a_cache_that_cannot_be_written_is_one_line_naming_it(checkpoints, tmp_path, monkeypatch):
    hf_dir, *_ = checkpoints
    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("GIT_SCRATCH_CACHE", str(tmp_path / "a file" / "cache"))
    with pytest.raises(ValueError, match=f"^cannot convert {hf_dir} into the cache {tmp_path / 'a file' / 'cache'} "
                                         r"\(.*\); GIT_SCRATCH_CACHE names another cache folder$"):
        git_scratch.load(hf_dir)


def test_a_file_digest_is_remembered_by_its_stat_and_recomputed_when_the_file_changes(tmp_path):
    f, digests = tmp_path / "weights", tmp_path / "digests"
    f.write_bytes(b"one")
    assert file_digest(f, digests) == hashlib.sha256(b"one").hexdigest()
    (memo,) = digests.iterdir()
    memo.write_text("remembered")  # a second call reads the memo, not the file
    assert file_digest(f, digests) == "remembered"
    f.write_bytes(b"two")  # same size, new content: new mtime and ctime, so a new key
    assert file_digest(f, digests) == hashlib.sha256(b"two").hexdigest()


# ---------------------------------------------------------------- other names, and what is not a model
def test_demo_is_the_shipped_model(cache):
    assert resolve(DEMO) == shapes.CHECKPOINT
    assert git_scratch.load(DEMO).config == git_scratch.load(shapes.CHECKPOINT).config
    assert Path(git_scratch.Processor.from_pretrained(DEMO).source) == shapes.CHECKPOINT


def test_an_existing_folder_wins_over_a_name_of_the_same_shape(checkpoints, cache, tmp_path, monkeypatch):
    _, our_dir, *_ = checkpoints
    monkeypatch.chdir(tmp_path)
    shutil.copytree(our_dir, tmp_path / REPO_ID)
    (tmp_path / DEMO).mkdir()
    assert resolve(REPO_ID) == Path(REPO_ID)  # the folder, with no hub asked
    with pytest.raises(ValueError, match="^demo: no config.json"):
        resolve(DEMO)


def not_a_model(tmp_path: Path, how: str) -> Path:
    path = tmp_path / how
    path.mkdir() if how != "a file" else path.write_text("x")
    if how == "bert":
        (path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    elif how == "onnx graphs alone":
        (path / "image_encoder.onnx").write_bytes(b"")
    elif how == "git_scratch without weights":
        (path / "config.json").write_text(json.dumps({"model_type": "git_scratch"}))
    elif how == "hub cache folder":
        path = path.rename(tmp_path / "models--owner--tiny")
        (path / "snapshots").mkdir()
    return path


@pytest.mark.parametrize("how, says", [
    ("empty", "no config.json (is this a git_scratch checkpoint directory?), no onnx_export.json (an export-onnx "
              "folder), no `latest` (a training run)"),
    ("bert", "not a git_scratch checkpoint, nor a Hugging Face GIT one (model_type 'bert')"),
    ("onnx graphs alone", "ONNX graphs without onnx_export.json, so not a folder export-onnx wrote whole"),
    ("git_scratch without weights", "no model.safetensors"),
    ("hub cache folder", "a Hugging Face hub cache folder; name the model by its hub id, owner/tiny"),
    ("a file", "is a file; pass the checkpoint directory, the folder that holds config.json and model.safetensors"),
])
def test_a_folder_that_is_no_kind_of_model_says_what_it_lacks(tmp_path, how, says):
    path = not_a_model(tmp_path, how)
    with pytest.raises(ValueError) as info:
        git_scratch.load(path)
    assert says in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_missing_path_says_how_a_model_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"no such checkpoint directory \(a model is named as a checkpoint folder, "
                                         r".*a hub id owner/name\[@revision\], or demo\)$"):
        git_scratch.load(tmp_path / "nope")


def test_load_refuses_an_export_folder_naming_what_runs_it(checkpoints, tmp_path):
    _, our_dir, *_ = checkpoints
    export = shutil.copytree(our_dir, tmp_path / "export")
    (export / MANIFEST).write_text("{}")
    assert resolve(export) == export
    with pytest.raises(ValueError, match="an export-onnx folder, which runs on onnxruntime: open it with "
                                         "git_scratch.export.runtime.OnnxGIT, not load"):
        git_scratch.load(export)


def test_a_processor_reads_any_folder_of_its_files(tmp_path):
    (tmp_path / "settings").mkdir()  # no config.json, no weights: a processor needs neither
    assert processor_dir(tmp_path / "settings") == tmp_path / "settings"
    with pytest.raises(ValueError, match="no such checkpoint directory"):
        processor_dir(tmp_path / "nope")
