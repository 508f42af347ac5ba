"""The GIT mask, the one idea of the paper, held behaviour by behaviour."""

import torch

from git_scratch.mask import git_mask, with_padding

N, T = 3, 4


def test_image_tokens_see_every_image_token():
    assert git_mask(N, T)[:N, :N].all()


def test_image_never_sees_text():
    assert not git_mask(N, T)[:N, N:].any()


def test_text_sees_every_image_token():
    assert git_mask(N, T)[N:, :N].all()


def test_text_sees_itself_and_the_past_never_the_future():
    text = git_mask(N, T)[N:, N:]
    assert torch.equal(text, torch.ones(T, T, dtype=torch.bool).tril())


def test_padding_removes_keys_but_never_empties_a_row():
    keep = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    allowed = with_padding(git_mask(N, T), N, keep)
    assert allowed.shape == (2, 1, N + T, N + T)
    assert not allowed[0, 0, :, N : N + 2].any()  # padded text keys invisible to everyone
    assert torch.equal(allowed[1, 0], git_mask(N, T))  # an unpadded row is untouched
    assert allowed.any(dim=-1).all()  # every query still sees the image


def test_a_changed_future_token_does_not_change_past_logits(reference):
    r = reference("tiny")
    px, ids = r.pixels(1), r.ids(1, 6)
    changed = ids.clone()
    changed[0, 4] = (ids[0, 4] + 1) % r.ours.config.text.vocab_size
    with torch.no_grad():
        a, b = r.ours(px, ids).logits, r.ours(px, changed).logits
    assert torch.equal(a[:, :4], b[:, :4])  # positions before the change: bit-identical
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_the_image_changes_every_text_logit(reference):
    r = reference("tiny")
    px, ids = r.pixels(1), r.ids(1, 6)
    with torch.no_grad():
        a, b = r.ours(px, ids).logits, r.ours(px + 0.5, ids).logits  # an offset: the pre-LayerNorm removes pure scaling
    assert not torch.isclose(a, b, atol=1e-4).all(dim=-1).any()


def test_show_draws_the_mask_cell_for_cell(capsys):
    from git_scratch import mask

    text = mask.show(3, 4)
    assert capsys.readouterr().out == text + "\n"
    rows = [line for line in text.splitlines()[1:] if not line.startswith("-")]
    drawn = torch.tensor([[c == "#" for c in line.replace("|", "").split()[1:]] for line in rows])
    assert torch.equal(drawn, mask.git_mask(3, 4))


def test_show_docstring_is_its_output(capsys):
    import doctest

    from git_scratch import mask

    result = doctest.testmod(mask)
    assert result.attempted == 1 and result.failed == 0
