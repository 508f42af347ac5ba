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
