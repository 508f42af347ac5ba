"""The decoding loop: compiled steps give the eager ids, and the host looks at the device only a few times.

`generate(..., compile=True)` runs the same `Cached.decode_step` under torch.compile (on CUDA, replayed from a
captured graph): ids must equal the eager path token for token, for each search and architecture option.
The searches decide "every row finished" on the device and look at it once every CHECK_EVERY steps, so a
whole caption costs a handful of host reads, not one or more per token.
"""

import pytest
import torch

from test_architecture import PROMPTS, pixels, tiny

from git_scratch.generation.search import CHECK_EVERY


@pytest.mark.parametrize("case", ["greedy", "sampling", "beam4", "prompts", "prompts-per-image", "video", "pre-norm"])
def test_compiled_decoding_gives_the_eager_ids(case):
    model = tiny("pre" if case == "pre-norm" else "post", video=case == "video")
    px = pixels(model, 3)
    kw = {"max_new_tokens": 10}
    if case == "sampling":
        kw.update(do_sample=True, top_k=5)
    if case == "beam4":
        kw.update(num_beams=4, num_return_sequences=2)
    if case == "prompts":
        kw.update(input_ids=PROMPTS)
    if case == "prompts-per-image":  # 3 images with 1, 3 and 2 prompts: each prompt's rows read a copy
        kw.update(input_ids=[PROMPTS[0], *PROMPTS, PROMPTS[2], PROMPTS[1]], prompts_per_image=[1, 3, 2])

    def run(compile):
        g = torch.Generator().manual_seed(7) if case == "sampling" else None
        return model.generate(px, compile=compile, generator=g, return_scores=True, **kw)

    eager, compiled = run(False), run(True)
    assert torch.equal(compiled.sequences, eager.sequences)
    assert eager.sequences.shape[1] > 3  # something was generated
    # the compiled step sums in another order than eager (fused kernels): float32 rounding of ~1e-6 per term
    torch.testing.assert_close(compiled.scores, eager.scores, rtol=0, atol=1e-4)


def test_compile_needs_the_cache():
    model = tiny()
    with pytest.raises(ValueError, match="compile=True compiles the cached decode step: it needs use_cache=True"):
        model.generate(pixels(model, 1), compile=True, use_cache=False)


def count_host_reads(monkeypatch) -> list:
    """Every Tensor.item, bool(), tolist(), int() and float() from here on: each waits for the device on a GPU."""
    calls = []
    for name in ("item", "__bool__", "tolist", "__int__", "__index__", "__float__"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _original=original, _name=name):
            calls.append(_name)
            return _original(self, *a)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return calls


@pytest.mark.parametrize("beams", [1, 4])
def test_a_32_token_caption_reads_the_device_at_most_8_times(beams, monkeypatch):
    model = tiny()
    with torch.no_grad():
        model.lm_head.bias[model.config.text.eos_id] -= 100.0  # no row ends early: all 32 steps run
    px = pixels(model, 4)
    image = model.encode_image(px)
    calls = count_host_reads(monkeypatch)
    ids = model.generate(image=image, max_new_tokens=32, num_beams=beams)
    monkeypatch.undo()
    assert ids.shape == (4, 33)
    # What remains: the prompt lengths' min and max (one read), the mask's cache check (one), the image mask's
    # all-true check (one), "all finished?" every CHECK_EVERY steps (3 of 32: the last step needs no look),
    # and the longest row at the end (one).
    assert len(calls) == 3 + 32 // CHECK_EVERY - 1 + 1 <= 8, calls


def test_caption_compile_on_the_command_line_gives_the_same_records(tmp_path, capsys):
    from _cli_helpers import build_checkpoint, photo, records

    from git_scratch import cli

    _, ckpt = build_checkpoint(tmp_path)
    args = ["caption", str(photo("astronaut.png")), str(photo("coffee.png")), "-c", str(ckpt), "--json",
            "--max-new-tokens", "8", "--num-beams", "2", "--no-progress"]
    assert cli.main(args) == 0
    eager = records(capsys.readouterr().out)
    assert cli.main(args + ["--compile"]) == 0
    compiled = records(capsys.readouterr().out)
    assert [r["ids"] for r in compiled] == [r["ids"] for r in eager] and len(eager) == 2
    with pytest.raises(SystemExit) as e:  # a usage error: the original's search is not compiled
        cli.main(args + ["--compile", "--compat", "original"])
    assert e.value.code == 2
