"""Every ```python block in README.md runs as written.

Each block is executed in a working directory holding what the README's blocks name: a checkpoint at
ckpt/git-base-coco (the tiny shape, random weights, the real 30,522-word vocabulary, so the API and the text
it decodes are real) and photo.jpg (a real JPEG photograph). A README edit that breaks a block, or a renamed
API that a block still uses, fails here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from _cli_helpers import photo, preprocessor_config, vocab_dir

import git_scratch
from git_scratch.constants import TOKENIZER_FILES

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 1  # the Python section: if it goes, so does the test below


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    cfg = git_scratch.GitConfig.preset("tiny")  # 32 px images, 64 text positions: seconds, not minutes
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_size=30522, bos_id=101, eos_id=102))
    ckpt = root / "ckpt" / "git-base-coco"
    git_scratch.save(git_scratch.init_weights(git_scratch.GIT(cfg), std=0.1), ckpt)
    for name in TOKENIZER_FILES:
        if (vocab_dir() / name).is_file():
            shutil.copy(vocab_dir() / name, ckpt / name)
    (ckpt / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(cfg.vision.image_size)))
    shutil.copy(photo("rocket.jpg"), root / "photo.jpg")
    return root


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_a_readme_python_block_runs_as_written(code, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    exec(compile(code, "README.md (a python block)", "exec"), {"__name__": "__readme__"})  # raises if it breaks
