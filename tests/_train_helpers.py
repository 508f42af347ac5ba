"""Shared by the training and evaluation tests: a fast model of the shapes task, and one CPU thread."""

from dataclasses import replace

import pytest
import torch

from git_scratch import GIT, GitConfig, init_weights


@pytest.fixture(autouse=True)
def one_thread():
    """These models are too small to gain from threads, and on a shared CPU the extra threads spin-wait:
    shapes-tiny's 16 steps took 1.8 s on one thread and 27 s on two while other jobs ran."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def mini_config() -> GitConfig:
    cfg = GitConfig.preset("shapes-tiny")
    return replace(cfg, vision=replace(cfg.vision, dim=32, n_layers=1, mlp_dim=64, patch_size=24),
                   text=replace(cfg.text, dim=32, n_layers=1, mlp_dim=64))


def new_model(cfg=None, seed=0) -> GIT:
    return init_weights(GIT(cfg or mini_config()), generator=torch.Generator().manual_seed(seed))
