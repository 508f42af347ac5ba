"""The page of `git-scratch serve` in a real headless Chromium: pick a photo, see the command line's caption,
its words' heat maps, and an answer.

Driven by Selenium through Debian's `chromium` and `chromium-driver` (.ci/run installs them when missing): the
driver is built from the same source as the browser, so the two always match, and Selenium is a small
pure-Python wheel (Playwright would bring its own driver and want its own browser build, downloaded at setup).
SERVE_SCREENSHOT=FILE.png keeps a screenshot of the finished page there.
"""

from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image

from _cli_helpers import in_process, records
from _serve_helpers import DEMO, Server, shape_png

QUESTION = "how many shapes are there?"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(log=tmp_path_factory.mktemp("server") / "access.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver"
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,860"):
        opts.add_argument(arg)
    b = webdriver.Chrome(service=Service(driver), options=opts)
    yield b
    b.quit()


def test_the_page_shows_the_command_lines_caption_its_heat_maps_and_an_answer(server, browser, tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = tmp_path / "shapes.png"
    Image.open(shape_png(tmp_path, 3)).resize((288, 288), Image.NEAREST).save(path)  # a photo-sized upload
    _, out, _ = in_process(capsys, "caption", path, "-c", DEMO, "--json")
    (printed,) = records(out)
    _, out, _ = in_process(capsys, "vqa", path, "-q", QUESTION, "-c", DEMO, "--json")
    (answer,) = records(out)

    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait = WebDriverWait(browser, 120)
    caption = browser.find_element(By.ID, "caption")
    wait.until(lambda b: caption.get_attribute("data-state") != "busy")
    assert caption.get_attribute("data-state") == "done", browser.find_element(By.ID, "error").text
    assert caption.text == printed["text"]
    assert [int(i) for i in caption.get_attribute("data-ids").strip("[]").split(",")] == printed["ids"]

    words = browser.find_element(By.ID, "words")
    wait.until(lambda b: words.get_attribute("data-state") == "done")
    labels = [f.text for f in words.find_elements(By.TAG_NAME, "figcaption")]
    assert len(labels) == len(printed["ids"]) - 1  # one heat map per new token, [SEP] included
    assert " ".join(labels[:-1]) == printed["text"] and labels[-1] == "[SEP]"  # the demo vocabulary: whole words

    browser.find_element(By.ID, "question").send_keys(QUESTION)
    browser.find_element(By.CSS_SELECTOR, "#ask button").click()
    said = browser.find_element(By.CSS_SELECTOR, "#answers li b")
    wait.until(lambda b: said.text != "…")
    assert said.text == answer["text"]

    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    picture = Image.open(shot)
    assert picture.size[0] >= 900 and len(picture.convert("L").getcolors(1 << 16) or []) > 16  # not a blank page
    if os.environ.get("SERVE_SCREENSHOT"):
        shutil.copy(shot, os.environ["SERVE_SCREENSHOT"])
