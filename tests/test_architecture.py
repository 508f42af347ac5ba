"""One code path: an architecture change made in the model files reaches `generate` by itself.

The reference is the uncached rollout (`use_cache=False`: the whole sequence through `GIT.forward` at
every step). Cached decoding must give the same ids for every option the config offers, for a changed
block, and must fall back or refuse, never differ, when the model breaks what the cache relies on.
Models are built here at random init (std 0.1, so the words depend on the image; asserted below); the
cache comparisons first move every vector and scalar parameter away from its init (`randomise`).
"""

import warnings

import pytest
import torch
from torch import nn

from git_scratch import GIT, GitConfig, init_weights, load, record, save
from git_scratch.generation.cache import CacheMisuse
from git_scratch.decoder import TextBlock
from git_scratch.generation.cache_check import cache_mismatch
from git_scratch.generation.decoders import Cached, Uncached
from git_scratch.layers import MLP, Attention
from git_scratch.convert import ConversionError, convert

# Scores are sums of the same float32 log-probs computed through two paths (cache vs full forward):
# they agree to a few ulps of each per-token term (measured < 1e-6 here); 1e-5 is ~20x that, while a
# wrong token moves a score by 1e-2 or more.
SCORE_TOL = 1e-5


@torch.no_grad()
def randomise(model: GIT, seed: int = 0) -> GIT:
    """Every parameter away from its initial value, as training moves them: a change the cache does not
    reproduce can be invisible at its initial value (a gate of 1 multiplies by 1). Weights keep their random
    init; every vector (norm weights at 1, biases at 0) moves by N(0, 0.2) (more, and the head bias outweighs
    the image, which the image-matters check below would notice); every scalar (a gate, a scale: init 0 or 1)
    is drawn from U(0.25, 0.75), far from both."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.ndim == 0:
            p.copy_(0.25 + 0.5 * torch.rand((), generator=g))
        elif p.ndim == 1:
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def tiny(norm: str = "post", video: bool = False, seed: int = 0, randomised: bool = False) -> GIT:
    cfg = GitConfig.preset("tiny-video" if video else "tiny")
    cfg.text.norm = norm
    model = init_weights(GIT(cfg), std=0.1, generator=torch.Generator().manual_seed(seed)).eval()
    if randomised:
        randomise(model, seed)
    with torch.no_grad():
        model.lm_head.bias[cfg.text.eos_id] += 1.0  # some rows end early, so EOS and padding really happen
    return model


def pixels(model: GIT, n: int, seed: int = 0) -> torch.Tensor:
    c = model.config
    shape = (n, c.n_frames, 3) if c.n_frames else (n, 3)
    return torch.randn(*shape, c.vision.image_size, c.vision.image_size, generator=torch.Generator().manual_seed(seed))


PROMPTS = [[1, 5, 9], [1], [1, 7, 3, 4, 8]]  # one per image, different lengths


def both(model, px, **kw):
    """(cached, uncached) Generations of the same request."""
    cached = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8, **kw)
    rollout = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8, use_cache=False, **kw)
    return cached, rollout


def assert_same(cached, rollout):
    assert torch.equal(cached.sequences, rollout.sequences), f"\ncached  {cached.sequences}\nrollout {rollout.sequences}"
    assert (cached.scores - rollout.scores).abs().max() < SCORE_TOL
    assert (cached.logprob - rollout.logprob).abs().max() < SCORE_TOL


SEARCHES = {"greedy": {}, "beam3x2": dict(num_beams=3, num_return_sequences=2, length_penalty=0.7),
            "sample2": dict(do_sample=True, num_return_sequences=2, top_k=20)}


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_cached_generation_equals_the_uncached_rollout(norm, video, search):
    model = tiny(norm, video, randomised=True)
    px = pixels(model, 3)
    kw = dict(SEARCHES[search])
    if kw.get("do_sample"):  # the same random draws on both paths
        cached = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8, generator=torch.Generator().manual_seed(1), **kw)
        rollout = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8, use_cache=False,
                                 generator=torch.Generator().manual_seed(1), **kw)
    else:
        cached, rollout = both(model, px, **kw)
    assert_same(cached, rollout)
    # the words depend on the image, so an image bug on either path would show
    moved = model.generate(px + 0.5, PROMPTS, max_new_tokens=8, generator=torch.Generator().manual_seed(1), **kw)
    assert not torch.equal(moved, cached.sequences)


def test_pre_norm_is_a_different_model_with_a_final_layernorm():
    post, pre = tiny("post"), tiny("pre")
    assert pre.ln_f is not None and post.ln_f is None
    assert "ln_f.weight" in pre.state_dict() and "ln_f.weight" not in post.state_dict()
    px, ids = pixels(post, 2), torch.tensor([[1, 5, 9], [1, 4, 4]])
    # the same weights wired two ways: apart by far more than float32 noise (~1e-6 on logits of order 1)
    assert (post(px, ids).logits - pre(px, ids).logits).abs().max() > 1e-2


def scaled(forward, factor):
    def wrapped(self, *args, **kwargs):
        return forward(self, *args, **kwargs) * factor

    return wrapped


@pytest.mark.parametrize("cls", [TextBlock, MLP])
def test_wrapping_a_block_or_mlp_in_user_code_reaches_generate(monkeypatch, cls):
    model = tiny()
    px = pixels(model, 3)
    before = model.generate(px, PROMPTS, max_new_tokens=8, num_beams=2)
    monkeypatch.setattr(cls, "forward", scaled(cls.forward, 1.7))
    cached, rollout = both(model, px, num_beams=2)
    assert_same(cached, rollout)
    assert not torch.equal(cached.sequences, before)  # the change did reach generation


def test_a_mask_that_lets_the_image_see_the_text_falls_back_to_the_uncached_path(monkeypatch):
    model = tiny()
    px = pixels(model, 3)
    monkeypatch.setattr(model, "mask", lambda n_img, n_txt, device=None: torch.ones(n_img + n_txt, n_img + n_txt,
                                                                                    dtype=torch.bool, device=device))
    with pytest.warns(UserWarning, match="image tokens attend to text"):
        cached = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8)
    rollout = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8, use_cache=False)
    assert_same(cached, rollout)


def test_a_mask_with_bidirectional_text_falls_back_to_the_uncached_path(monkeypatch):
    model = tiny()
    git_mask = model.mask

    def prefix_lm(n_img, n_txt, device=None):
        m = git_mask(n_img, n_txt, device)
        m[n_img:, n_img:] = True
        return m

    monkeypatch.setattr(model, "mask", prefix_lm)
    px = pixels(model, 3)
    with pytest.warns(UserWarning, match="text tokens attend to later text"):
        cached = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8)
    assert_same(cached, model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8, use_cache=False))


def test_a_narrower_mask_that_keeps_the_git_structure_is_served_by_the_cache(monkeypatch):
    """Text that may not see the image's class token: still cacheable; the cache takes the model's rows."""
    model = tiny()
    git_mask = model.mask

    def no_cls(n_img, n_txt, device=None):
        m = git_mask(n_img, n_txt, device)
        m[n_img:, 0] = False
        return m

    px = pixels(model, 3)
    plain = model.generate(px, PROMPTS, max_new_tokens=8)
    monkeypatch.setattr(model, "mask", no_cls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        cached, rollout = both(model, px)
    assert_same(cached, rollout)
    assert not torch.equal(cached.sequences, plain)


def test_a_block_that_attends_under_another_mask_is_refused(monkeypatch):
    forward = TextBlock.forward

    def another_mask(self, x, allowed, *args, **kwargs):  # the rest of the block contract passed on as it came
        return forward(self, x, None if allowed is None else allowed.clone(), *args, **kwargs)

    monkeypatch.setattr(TextBlock, "forward", another_mask)
    model = tiny()
    with pytest.raises(CacheMisuse, match="a decoder block attended under a mask other than the one the model gave "
                                          "it.*generate with use_cache=False"):
        model.generate(pixels(model, 1), max_new_tokens=4)
    model.generate(pixels(model, 1), max_new_tokens=4, use_cache=False)  # the way out the message names


def test_forward_always_returns_one_output_type():
    model = tiny()
    px, ids = pixels(model, 2), torch.tensor([[1, 5, 9], [1, 4, 4]])
    plain = model(px, ids)
    full = model(px, ids, labels=ids, output_hidden_states=True, output_attentions=True)
    assert type(plain) is type(full)
    assert plain.loss is None and plain.hidden_states is None and plain.attentions is None
    # attention maps take the explicit softmax instead of SDPA: the same sums in another order (float32)
    assert torch.allclose(plain.logits, full.logits, rtol=0, atol=1e-5) and full.loss is not None
    n = model.config.text.n_layers
    assert len(full.hidden_states) == n + 1 and len(full.attentions) == n
    assert len(full.vision_hidden_states) == model.config.vision.n_layers + 1


def test_a_pre_norm_checkpoint_saves_and_loads_but_is_refused_by_the_hugging_face_export(tmp_path):
    model = tiny("pre")
    save(model, tmp_path / "pre")
    back = load(tmp_path / "pre")
    assert back.config.text.norm == "pre"
    px, ids = pixels(model, 1), torch.tensor([[1, 5, 9]])
    assert torch.equal(back(px, ids).logits, model(px, ids).logits)
    with pytest.raises(ConversionError, match="text.norm is 'pre': transformers' GIT has only post-LayerNorm "
                                              "decoder blocks"):
        convert(tmp_path / "pre", tmp_path / "hf", to_hf=True)
    assert not (tmp_path / "hf").exists()


def test_an_outer_recording_keeps_recording_after_forward_opens_and_closes_its_own():
    model = tiny()
    px, ids = pixels(model, 1), torch.tensor([[1, 5, 9]])
    with record.recording([model.blocks]) as outer:
        model(px, ids, output_attentions=True)  # forward's own recording: the same modules, the same tensors
        last = model(px, torch.tensor([[1, 4]]))  # after it closed, the outer one is the open one again
    L = model.config.vision.n_tokens + 2  # the last call: image tokens + 2 text tokens
    assert last.logits.shape[1] == 2
    assert outer.attentions(model.blocks)[0].shape[-2:] == (L, L)
    assert outer.hidden_states(model.blocks)[-1].shape[1] == L


class ImageGate(Attention):
    """A learned scalar gate on the image tokens' keys/values, decided by the block contract's n_img.
    `buggy`: applied only where image and text tokens come together (the full forward), so the cached image
    prefill, which runs the image tokens alone, leaves it out: the bug issue 34 met."""

    def __init__(self, attn: Attention, buggy: bool = False):
        super().__init__(attn.q_proj.in_features, attn.n_heads)
        self.load_state_dict(attn.state_dict(), strict=False)
        self.gate, self.buggy = nn.Parameter(torch.ones(())), buggy

    def keys_values(self, x, *, n_img: int = 0):
        k, v = super().keys_values(x, n_img=n_img)  # (B, H, L, Dh)
        if n_img and not (self.buggy and n_img == x.shape[1]):
            k, v = (torch.cat([t[:, :, :n_img] * self.gate, t[:, :, n_img:]], dim=2) for t in (k, v))
        return k, v


def gated(buggy: bool, randomised: bool = True, preset: str = "tiny") -> GIT:
    model = tiny(randomised=randomised) if preset == "tiny" else init_weights(GIT(GitConfig.preset(preset)), std=0.1)
    for block in model.blocks:
        block.attn = ImageGate(block.attn, buggy)
    return randomise(model, seed=1) if randomised else model


def logits_gap(model: GIT, px: torch.Tensor, steps: int = 4) -> float:
    """Largest |logit| difference between the cached decoder and the full forward (decoders.Uncached), over
    each row's prompt and `steps` greedy tokens fed to both."""
    ids = torch.tensor([[1, 5, 9], [1, 7, 3]])
    lengths = torch.tensor([3, 3])
    image = model.encode_image(px)
    n_slots = ids.shape[1] + steps
    cached = Cached(model, image, 2, model.mask(image.shape[1], n_slots))
    rollout = Uncached(model, image, 2, n_slots)
    a, b = cached.prefill(ids, lengths), rollout.prefill(ids, lengths)
    gap = (a - b).abs().max()
    for i in range(steps):
        token, pos = a.argmax(-1), lengths + i
        a, b = cached.decode_step(token, pos), rollout.decode_step(token, pos)
        gap = max(gap, (a - b).abs().max())
    return float(gap.detach())


# float32 logits (of order 1-10) through two paths, the same products summed in another order: measured
# ~1e-6 here. 1e-4 leaves 100x; a gate of 0.25-0.75 left out of the prefill moves logits by ~1e-1 (asserted).
LOGIT_TOL = 1e-4


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_cached_logits_equal_the_full_forwards_at_every_step_with_every_parameter_randomised(norm):
    model = tiny(norm, randomised=True)
    assert logits_gap(model, pixels(model, 2)) < LOGIT_TOL


def test_a_gate_on_the_image_keys_that_the_prefill_applies_reaches_generation():
    model = gated(buggy=False)
    assert all(float(b.attn.gate.detach()) < 0.8 for b in model.blocks)  # randomised away from its init
    px = pixels(model, 3)
    cached, rollout = both(model, px, num_beams=2)
    assert_same(cached, rollout)
    assert logits_gap(model, pixels(model, 2)) < LOGIT_TOL
    assert cache_mismatch(model, px) is None


def test_a_gate_left_out_of_the_prefill_is_caught_once_parameters_are_randomised():
    at_init = gated(buggy=True, randomised=False)  # gate 1: the bug multiplies by 1, invisible
    px = pixels(at_init, 3)
    assert cache_mismatch(at_init, px) is None
    model = gated(buggy=True)
    assert logits_gap(model, pixels(model, 2)) > 100 * LOGIT_TOL
    why = cache_mismatch(model, px)
    assert why is not None and why.startswith("cached decoding differs from the uncached rollout at row ")


def test_eval_and_each_training_save_stop_on_a_gate_left_out_of_the_prefill(tmp_path):
    from git_scratch.data import shapes
    from git_scratch.data.datasets import ShapesDataset
    from git_scratch.evaluation.evaluate import evaluate
    from git_scratch.training.checkpoints import RunError
    from git_scratch.training.loop import TrainOptions, train

    model, processor = gated(buggy=True, preset="shapes-tiny"), shapes.processor()
    data = ShapesDataset(4, "caption", offset=shapes.VAL_OFFSET)
    with pytest.raises(ValueError, match=r"^cached decoding differs from the uncached rollout at row \d+ of 4: .*"
                                         r"--no-cache-check skips this check$"):
        evaluate(model, data, processor, 4, False, max_new_tokens=6)
    scores, _ = evaluate(model, data, processor, 4, False, cache_check=False, max_new_tokens=6)  # the way out
    assert "cider_d" in scores
    opts = TrainOptions(steps=1, batch_size=4, lr=1e-5, warmup=0, bf16="off", augment=False, save_every=1, keep=1,
                        progress=False)
    with pytest.raises(RunError, match=r"step-000001: cached decoding differs from the uncached rollout at row "):
        train(model, ShapesDataset(8, "caption"), processor, opts, tmp_path / "run")
