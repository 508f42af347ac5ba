"""What a new user hit, each held: the API page works offline; explain on an ONNX export is a 422 that the page
shows; a `convert --to-hf` folder runs in transformers' pipeline; a folder input says which files it skipped.
(Explain's picture labelling the tokens its font cannot draw: test_explain.py.)"""

from __future__ import annotations

import json
import re
import shutil

import httpx
import pytest

from _cli_helpers import in_process, records
from _serve_helpers import DEMO, error, shape_png
from test_serve import demo_app, serving
from test_serve_browser import browser  # noqa: F401 -- the fixture: headless Chromium


# ---------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def demo_url():
    with serving(demo_app()) as url:
        yield url


@pytest.fixture(scope="module")
def onnx_url(tmp_path_factory):
    """A server of the demo model's ONNX export (~20 s to export)."""
    from git_scratch.export.onnx import export_checkpoint
    from git_scratch.export.runtime import OnnxGIT
    from git_scratch.preprocessing.processor import Processor
    from git_scratch.serve.app import ServeOptions, create_app

    out = tmp_path_factory.mktemp("demo") / "onnx"
    export_checkpoint(DEMO, out, log=lambda line: None)
    with serving(create_app(OnnxGIT(out), Processor.from_pretrained(out), ServeOptions(str(out)))) as url:
        yield url


def test_the_api_page_fetches_nothing_from_outside(demo_url):
    page = httpx.get(demo_url + "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    script = httpx.get(demo_url + "/page/docs.js")
    assert script.status_code == 200
    for text in (page.text, script.text):
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)  # no script, style or font from a CDN
        assert not re.search(r"fetch\(\s*[\"'`](https?:)?//", text)
        assert "@import" not in text
    assert re.findall(r'src="([^"]+)"', page.text) == ["/page/docs.js"]
    assert httpx.get(demo_url + "/redoc").status_code == 404
    assert "/v1/caption" in httpx.get(demo_url + "/openapi.json").json()["paths"]


def test_the_api_page_lists_each_endpoint_with_its_form_fields(demo_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(demo_url + "/docs")
    listed = browser.find_element(By.ID, "endpoints")
    WebDriverWait(browser, 60).until(lambda b: listed.get_attribute("data-state") != "busy")
    assert listed.get_attribute("data-state") == "done", browser.find_element(By.ID, "error").text
    sections = {s.get_attribute("data-endpoint"): s for s in listed.find_elements(By.TAG_NAME, "section")}
    assert set(sections) == {"GET /health", "GET /health/live", "GET /health/ready", "POST /v1/caption", "POST /v1/vqa",
                             "POST /v1/explain"}
    caption = sections["POST /v1/caption"]
    assert "One caption record per image" in caption.text
    rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in caption.find_elements(By.TAG_NAME, "tr")]
    assert ["image", "list of file", "required", "", "one or more image files"] in rows
    assert ["num_beams", "integer", "default 1", ">= 1, <= 16", ""] in rows


def test_explain_of_an_onnx_export_is_a_422_saying_why(onnx_url, tmp_path):
    image = shape_png(tmp_path, 0)
    files = [("image", (image.name, image.read_bytes(), "image/png"))]
    assert httpx.post(onnx_url + "/v1/caption", files=files, timeout=120).status_code == 200  # the export serves
    r = httpx.post(onnx_url + "/v1/explain", files=files, timeout=120)
    assert r.status_code == 422
    assert error(r) == "explain needs the torch checkpoint: an ONNX export has no attention maps"


def test_the_page_shows_why_an_onnx_export_has_no_maps(onnx_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(onnx_url + "/")
    browser.find_element(By.ID, "file").send_keys(str(shape_png(tmp_path, 1)))
    words = browser.find_element(By.ID, "words")
    WebDriverWait(browser, 120).until(lambda b: words.get_attribute("data-state") not in ("busy", "empty"))
    assert words.get_attribute("data-state") == "error"
    assert words.is_displayed() and "an ONNX export has no attention maps" in words.text
    caption = browser.find_element(By.ID, "caption")
    WebDriverWait(browser, 120).until(lambda b: caption.get_attribute("data-state") != "busy")
    assert caption.get_attribute("data-state") == "done"  # the caption still shows


# ---------------------------------------------------------------- convert --to-hf
INPUT_NAMES = ["input_ids", "attention_mask"]


def test_a_to_hf_folder_runs_in_transformers_pipeline_giving_git_scratchs_captions_and_answers(tmp_path, capsys):
    """transformers 5's image-text-to-text pipeline (image-to-text is gone) on `convert --to-hf` of the demo
    model. Without model_input_names its tokenizer also makes token_type_ids, which GIT's generate refuses.
    Its processor ends a text with [SEP], as BERT's does, so text="" prompts GIT with [CLS] [SEP]: the pipeline
    gives what GitForCausalLM.generate gives on those inputs. GIT's own prompt is [CLS] (+ the question):
    text="[CLS] ..." without special tokens, and then the pipeline gives git_scratch's captions and answers."""
    from PIL import Image
    from transformers import pipeline

    rc, _, err = in_process(capsys, "convert", DEMO, tmp_path / "hf", "--to-hf")
    assert rc == 0, err
    written = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert written == {**json.loads((DEMO / "tokenizer_config.json").read_text()), "model_input_names": INPUT_NAMES}

    paths = [shape_png(tmp_path, seed) for seed in range(3)]
    question = "what color is the circle?"
    captions = records(in_process(capsys, "caption", *paths, "-c", DEMO, "--json")[1])
    answers = records(in_process(capsys, "vqa", *paths, "-q", question, "-c", DEMO, "--json")[1])
    run = pipeline("image-text-to-text", model=str(tmp_path / "hf"))
    up_to = {"max_new_tokens": 20}
    for path, caption, answer in zip(paths, captions, answers):
        image = Image.open(path)
        (said,) = run(images=image, text="", generate_kwargs=up_to)
        ids = run.model.generate(**run.processor(images=image, text="", return_tensors="pt"), **up_to)
        assert said["generated_text"] == run.processor.decode(ids[0], skip_special_tokens=True)
        git = {"add_special_tokens": False, "return_full_text": False, "generate_kwargs": up_to}
        (said,) = run(images=image, text="[CLS]", **git)
        assert said["generated_text"] == caption["text"]
        (said,) = run(images=image, text=f"[CLS] {question}", **git)
        assert said["generated_text"].strip() == answer["text"]


def test_to_hf_writes_a_tokenizer_config_naming_the_inputs_where_there_was_none(tmp_path, capsys):
    src = tmp_path / "ours"
    shutil.copytree(DEMO, src)
    (src / "tokenizer_config.json").unlink()
    rc, _, err = in_process(capsys, "convert", src, tmp_path / "hf", "--to-hf")
    assert rc == 0, err
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text()) == {"model_input_names": INPUT_NAMES}


# ---------------------------------------------------------------- a folder's other files
def test_a_folder_says_once_what_it_skipped_and_why(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(2):
        shape_png(folder, seed)
    for name in ("a.mp4", "b.MOV", "notes.txt", ".DS_Store"):  # the hidden file is not counted
        (folder / name).write_bytes(b"x")
    (folder / "more").mkdir()
    shape_png(folder / "more", 2)
    rc, out, err = in_process(capsys, "caption", folder, "-c", DEMO, "--json", "--no-progress")
    assert rc == 0 and [r["input"] for r in records(out)] == [str(folder / "shape-0.png"), str(folder / "shape-1.png")]
    assert err.splitlines() == [f"warning: {folder}: skipped 4 that are not images: 2 videos (use `git-scratch "
                                f"video`), 1 subfolder (not searched: pass '{folder}/**/*.jpg'), 1 other file"]


def test_a_folder_of_images_alone_warns_of_nothing(tmp_path, capsys):
    from git_scratch.cli.items import expand

    shape_png(tmp_path, 0)
    (tmp_path / ".hidden").write_bytes(b"x")
    assert [i.path.name for i in expand([str(tmp_path)])] == ["shape-0.png"]
    assert capsys.readouterr().err == ""
    (tmp_path / "clip.webm").write_bytes(b"x")
    expand([str(tmp_path)])
    assert capsys.readouterr().err == f"warning: {tmp_path}: skipped 1 that are not images: 1 video (use " \
                                      "`git-scratch video`)\n"
