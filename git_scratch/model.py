"""GIT: Generative Image-to-text Transformer (Wang et al. 2022, arXiv 2205.14100), as the paper's figure.

    image ─▶ CLIP ViT (vision.py) ─▶ Linear + LayerNorm (decoder.ImageProjection) ─┐
                                                                                   ├─ [img ; txt] ─▶ 6 × TextBlock ─▶ head
    text ids ─▶ word + position embeddings + LayerNorm (decoder.TextEmbedding) ────┘   under git_mask (mask.py)

Generation (generate.py) runs these same pieces, `embed_text`, `mask`, `run` and `head`, over a KV cache.

Shape legend, used in every model file:
    B batch, F video frames, N image tokens (all frames), N1 tokens of one frame, T text tokens, L = N + T,
    S key tokens (in the cache: text slots), D text width, Dv vision width, H heads, Dh = D / H, V vocabulary;
    generating: Bi images, P prompts, K beams (or samples) per prompt, R = P * K rows, M = max_new_tokens,
    G groups of rows that read one copy of an image's keys/values (Bi; P where images have different numbers
    of prompts).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from .config import GitConfig
from .decoder import ImageProjection, TextBlock, TextEmbedding
from . import record
from .loss import hf_loss as lm_loss  # next-token cross-entropy, -100 ignored (loss.py)
from .mask import git_mask, with_padding
from .vision import VisionEncoder


def check_pixels(config, pixels: torch.Tensor) -> None:
    """Clear errors for pixels a model of this `config` cannot take, before any compute."""
    if pixels.ndim not in (4, 5):
        raise ValueError(f"pixel_values must be (B, 3, H, W) or (B, frames, 3, H, W), got shape {tuple(pixels.shape)}")
    if pixels.shape[-3] != config.vision.n_channels:
        raise ValueError(f"pixel_values has {pixels.shape[-3]} channels, the model expects {config.vision.n_channels}")
    if pixels.ndim == 5:
        if not config.n_frames:
            raise ValueError("got video pixel_values (5 dims) but this checkpoint has no temporal embeddings")
        if pixels.shape[1] > config.n_frames:  # NB: the original silently drops the frames past its embeddings
            raise ValueError(f"got {pixels.shape[1]} video frames; this checkpoint has temporal embeddings for "
                             f"{config.n_frames} (sample at most {config.n_frames} frames)")


@dataclass
class GitOutput:
    """What `GIT.forward` returns, always."""

    logits: torch.Tensor  # (B, T, V): text positions only
    loss: torch.Tensor | None = None  # with labels
    hidden_states: list[torch.Tensor] | None = None  # decoder: embeddings + each block's output, (B, L, D)
    attentions: list[torch.Tensor] | None = None  # decoder: (B, H, L, L) per block
    vision_hidden_states: list[torch.Tensor] | None = None  # each vision block's input + the last output (B, N1, Dv)
    vision_attentions: list[torch.Tensor] | None = None
    image: torch.Tensor | None = None  # projected image tokens (B, N, D), reusable via `image=`


class GIT(nn.Module):
    def __init__(self, config: GitConfig):
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config.vision)
        self.img_proj = ImageProjection(config)
        self.embed = TextEmbedding(config.text)
        self.blocks = nn.ModuleList(TextBlock(config.text) for _ in range(config.text.n_layers))
        # Pre-LN blocks leave the residual stream un-normalised: one LayerNorm before the head (GPT-2's ln_f).
        self.ln_f = nn.LayerNorm(config.text.dim, eps=config.text.ln_eps) if config.text.norm == "pre" else None
        # NB: the LM head has a bias and is not tied to the word embeddings (unless the config says so).
        self.lm_head = nn.Linear(config.text.dim, config.text.vocab_size)
        if config.text.tie_embeddings:
            self.lm_head.weight = self.embed.tok_embed.weight

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) or video (B, F, 3, H, W) -> image tokens (B, N, D). Run once per image; reuse freely."""
        check_pixels(self.config, pixels)
        video = pixels.ndim == 5
        B = pixels.shape[0]
        if video:  # all frames through the encoder as one batch
            pixels = rearrange(pixels, "b f c h w -> (b f) c h w")
        feats = self.vision(pixels)  # (B*F, N1, Dv)
        if video:
            feats = self.img_proj.add_time(rearrange(feats, "(b f) n d -> b f n d", b=B))
        return self.img_proj(feats)

    def embed_text(self, ids: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        return self.embed(ids, start)  # (B, T, D)

    def mask(self, n_img: int, n_txt: int, device=None) -> torch.Tensor:
        """(L, L) may-attend mask of [image ; text]. Generation takes its rows from here too."""
        return git_mask(n_img, n_txt, device=device)

    def run(self, x, allowed, kv=None, *, n_img: int) -> torch.Tensor:
        """x (B, L, D), its first n_img tokens the image's, through every decoder block: the one loop that
        forward and generation share. `kv`: one cache layer per block while generating (generation/cache.py)."""
        for i, block in enumerate(self.blocks):
            x = block(x, allowed, None if kv is None else kv[i], n_img=n_img)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output (B, T, D) -> next-token logits (B, T, V)."""
        return self.lm_head(x if self.ln_f is None else self.ln_f(x))

    def forward(self, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, *,
                image: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> GitOutput:
        """`.logits` (B, T, V) of the text positions, `.loss` with `labels`, intermediates when asked.

        `attention_mask` (B, T): 1 for real text tokens, 0 for padding. `image`: the output of
        `encode_image`, instead of `pixel_values`.
        """
        if input_ids is None:
            raise ValueError("input_ids is required (start captions with [CLS], the bos id)")
        if (pixel_values is None) == (image is None):
            raise ValueError("give exactly one of pixel_values and image")
        encode = image is None
        want = output_hidden_states or output_attentions  # then record.py keeps the intermediates
        with record.recording([self.vision.blocks, self.blocks] if encode else [self.blocks], output_hidden_states,
                              output_attentions) if want else nullcontext() as rec:
            if encode:
                image = self.encode_image(pixel_values)
            B, T = input_ids.shape
            if image.shape[0] not in (1, B):
                raise ValueError(f"batch mismatch: {image.shape[0]} images for {B} text rows")
            img = image.expand(B, -1, -1)  # (B, N, D): one image may serve many prompts
            N = img.shape[1]

            x = torch.cat([img, self.embed_text(input_ids)], dim=1)  # (B, L, D): [image ; text]
            allowed = with_padding(self.mask(N, T, device=x.device), N, attention_mask)  # (L, L) or (B, 1, L, L)
            x = self.run(x, allowed, n_img=N)
            logits = self.head(x[:, N:])  # (B, T, V): only the text positions need logits
        out = GitOutput(logits, None if labels is None else lm_loss(logits, labels), image=image)
        if output_hidden_states:
            out.hidden_states = rec.hidden_states(self.blocks)
            out.vision_hidden_states = rec.hidden_states(self.vision.blocks) if encode else None
        if output_attentions:
            out.attentions = rec.attentions(self.blocks)
            out.vision_attentions = rec.attentions(self.vision.blocks) if encode else None
        return out

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, *, processor=None, **kwargs):
        """Token ids as transformers' generate returns them (greedy, beam search, sampling); see generate.py.
        pixel_values may also be images (a path, PIL image or uint8 array, or a list of them): `processor`
        makes them pixels, else the processor of the checkpoint `git_scratch.load` read the model from."""
        from .generation.generate import generate  # GIT.generate: a convenience, imported when called

        if pixel_values is not None and not torch.is_tensor(pixel_values):  # images, not pixels
            if processor is None:
                if getattr(self, "source", None) is None:
                    raise ValueError("images need the checkpoint's processor: pass processor=, or load the model "
                                     "with git_scratch.load(...)")
                from .preprocessing.processor import Processor

                processor = Processor.from_pretrained(self.source)
            pixel_values = processor(images=pixel_values).pixel_values.to(self.device, self.dtype)
        return generate(self, pixel_values, input_ids, attention_mask, **kwargs)
