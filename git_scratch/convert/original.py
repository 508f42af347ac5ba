"""The original GIT's checkpoint names (github.com/microsoft/GenerativeImage2Text) -> git_scratch names.

Tables only, like mapping.py: one row per module or parameter, `{i}` for a layer index, `.weight` /
`.bias` carried over. An original `model.pt` holds `{"model": state_dict}`; its keys may carry one or
more `module.` prefixes (left by DistributedDataParallel), which are stripped before renaming, as the
original's own loader strips them. The vision tower is OpenAI CLIP's `VisualTransformer`, the decoder a
BERT encoder under `textual.`.
"""

# The text embeddings' LayerNorm epsilon the original builds (layers/decoder.py:61; its BERT layers use 1e-12).
ORIGINAL_EMBED_LN_EPS = 1e-8

# NB: OpenAI CLIP's nn.MultiheadAttention keeps q, k and v in one packed parameter. The renaming gives
# it a name of its own (`attn.qkv_proj`, which our model does not have); SPLITS then cuts it in three.
ORIGINAL_BLOCK = "textual.transformer.encoder.layer.{i}."
CLIP_BLOCK = "image_encoder.transformer.resblocks.{i}."

ORIGINAL_NAME_MAP: dict[str, str] = {
    # CLIP ViT image encoder
    "image_encoder.conv1": "vision.patch_embed",  # no bias
    "image_encoder.class_embedding": "vision.cls_token",
    "image_encoder.positional_embedding": "vision.pos_embed",
    "image_encoder.ln_pre": "vision.ln_pre",
    CLIP_BLOCK + "ln_1": "vision.blocks.{i}.ln_1",
    CLIP_BLOCK + "attn.in_proj_weight": "vision.blocks.{i}.attn.qkv_proj.weight",  # packed: SPLITS
    CLIP_BLOCK + "attn.in_proj_bias": "vision.blocks.{i}.attn.qkv_proj.bias",  # packed: SPLITS
    CLIP_BLOCK + "attn.out_proj": "vision.blocks.{i}.attn.out_proj",
    CLIP_BLOCK + "ln_2": "vision.blocks.{i}.ln_2",
    CLIP_BLOCK + "mlp.c_fc": "vision.blocks.{i}.mlp.fc1",
    CLIP_BLOCK + "mlp.c_proj": "vision.blocks.{i}.mlp.fc2",
    "image_encoder.ln_post": "vision.ln_post",
    # visual projection (+ temporal embeddings of video checkpoints; "temperal" sic)
    "textual.visual_projection.0": "img_proj.fc",
    "textual.visual_projection.1": "img_proj.ln",
    "img_temperal_embedding.{i}": "img_proj.temporal_embed.{i}",
    # text embeddings
    "textual.embedding.words": "embed.tok_embed",
    "textual.embedding.positions": "embed.pos_embed",
    "textual.embedding.layer_norm": "embed.ln",
    # post-LN BERT decoder blocks
    ORIGINAL_BLOCK + "attention.self.query": "blocks.{i}.attn.q_proj",
    ORIGINAL_BLOCK + "attention.self.key": "blocks.{i}.attn.k_proj",
    ORIGINAL_BLOCK + "attention.self.value": "blocks.{i}.attn.v_proj",
    ORIGINAL_BLOCK + "attention.output.dense": "blocks.{i}.attn.out_proj",
    ORIGINAL_BLOCK + "attention.output.LayerNorm": "blocks.{i}.ln_1",
    ORIGINAL_BLOCK + "intermediate.dense": "blocks.{i}.mlp.fc1",
    ORIGINAL_BLOCK + "output.dense": "blocks.{i}.mlp.fc2",
    ORIGINAL_BLOCK + "output.LayerNorm": "blocks.{i}.ln_2",
    # LM head: only its bias. The weight is the word embedding's (tied; see ORIGINAL_DROPPED)
    "textual.output.bias": "lm_head.bias",
}

# Tensor transforms, applied after renaming: a packed name -> the names of its equal row blocks, in order.
SPLITS: dict[str, tuple[str, ...]] = {
    "vision.blocks.{i}.attn.qkv_proj": (
        "vision.blocks.{i}.attn.q_proj", "vision.blocks.{i}.attn.k_proj", "vision.blocks.{i}.attn.v_proj"),
}

# Source keys dropped on purpose (after `module.` is stripped).
ORIGINAL_DROPPED: tuple[str, ...] = (
    "image_encoder.proj",  # CLIP's image-text projection: GIT reads the token grid before it, never uses it
    # The original ties the head to the word embedding, and its loader never reads this copy (it loads by
    # named_parameters(), which lists a shared parameter once, under textual.embedding.words.weight).
    "textual.output.weight",
)

# The prefix DistributedDataParallel leaves, any number of times.
WRAPPER_PREFIX = "module."
