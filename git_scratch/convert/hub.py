"""A Hugging Face hub id, `owner/name` or `owner/name@revision`, fetched into huggingface_hub's own cache.

Only the files GIT needs come down (GIT_FILES, then the safetensors weights, or the pickled ones where a repository
has no safetensors), and config.json first, so that a repository that is not a GIT costs one small file.
huggingface_hub (the optional extra `hub`) does the rest as it always does: HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE
and HF_TOKEN mean here what they mean to it. Each failure is one ConversionError line (hub_error).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from git_scratch.constants import PREPROCESSOR_FILES, TOKENIZER_FILES

from .rename import ConversionError

# owner/name[@revision]: huggingface_hub checks the finer rules (no "--" or "..", at most 96 characters)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@\S+)?")
GIT_TYPES = ("git", "git_scratch")  # config.json's model_type of a Hugging Face GIT, and of a converted one

# The files a conversion reads, as glob patterns (shards are named model-00001-of-00002.safetensors).
GIT_FILES = ("config.json", *TOKENIZER_FILES, *PREPROCESSOR_FILES)
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin")
NEEDED = (*GIT_FILES, *SAFETENSORS, *PICKLES)

EXTRA = "pip install 'git_scratch[hub]'"


def is_hub_id(name: str) -> bool:
    return HUB_ID.fullmatch(name) is not None


def download(name: str) -> Path:
    """The local snapshot folder of hub id `name` with the files GIT needs, fetched where they are not cached.
    ConversionError (one line) for a missing huggingface_hub, a repository or revision the hub does not have,
    a repository that is not a GIT, or an id that is not cached while HF_HUB_OFFLINE is set."""
    try:
        import huggingface_hub
    except ImportError:
        raise ConversionError(f"{name}: no such folder, and fetching it as a Hugging Face hub id needs "
                              f"huggingface_hub: {EXTRA}") from None
    repo, _, revision = name.partition("@")

    def fetch(patterns, revision) -> Path:
        return Path(huggingface_hub.snapshot_download(repo, revision=revision or None, allow_patterns=list(patterns)))

    try:
        folder = fetch(["config.json"], revision)
        check_git(name, folder)
        folder = fetch(GIT_FILES + SAFETENSORS, folder.name)  # the snapshot folder is named by its commit
        if not any(folder.glob("*.safetensors")):
            folder = fetch(PICKLES, folder.name)
    except ConversionError:
        raise
    except Exception as e:  # whatever huggingface_hub raises becomes one line
        raise ConversionError(hub_error(name, e)) from None
    return folder


def check_git(name: str, folder: Path) -> None:
    """The snapshot's config.json names a GIT model."""
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"{name}: no config.json in the repository, so not a GIT checkpoint")
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (ValueError, AttributeError) as e:
        raise ConversionError(f"{name}: its config.json is not a JSON object ({e})") from None
    if model_type not in GIT_TYPES:
        raise ConversionError(f"{name} is not a GIT model: its config.json says model_type {model_type!r} "
                              f"(a GIT checkpoint says 'git')")


def hub_error(name: str, e: Exception) -> str:
    """One line for what huggingface_hub raised while fetching `name`."""
    from huggingface_hub import constants
    from huggingface_hub.utils import (GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    repo, _, revision = name.partition("@")
    why = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    if isinstance(e, LocalEntryNotFoundError):
        if constants.HF_HUB_OFFLINE:
            return (f"{name}: no such folder, and not in the Hugging Face cache ({constants.HF_HUB_CACHE}) while "
                    "HF_HUB_OFFLINE is set; fetch it once without HF_HUB_OFFLINE")
        return f"{name}: cannot reach the Hugging Face hub, and it is not in the cache ({why})"
    if isinstance(e, GatedRepoError):
        return f"{repo}: a gated repository; accept its terms on huggingface.co, then set HF_TOKEN"
    if isinstance(e, RepositoryNotFoundError):
        return f"{repo}: no such folder, nor a repository on the Hugging Face hub (a private one needs HF_TOKEN)"
    if isinstance(e, RevisionNotFoundError):
        return f"{repo}: the Hugging Face hub has no revision {revision or 'main'!r} of it"
    if isinstance(e, HFValidationError):
        return f"{name}: not a valid Hugging Face hub id ({why})"
    if isinstance(e, HfHubHTTPError):
        return f"{name}: the Hugging Face hub answered {why}"
    return f"{name}: cannot fetch from the Hugging Face hub ({type(e).__name__}: {why})"
