"""THE table: Hugging Face GIT parameter names -> git_scratch names. Nothing else lives here.

One row per module or parameter; `{i}` stands for a layer index. A row naming a module carries its
`.weight` / `.bias` over; a row naming a parameter maps that key exactly. The table is one-to-one, so
its inverse is the export back to Hugging Face (`--to-hf`).
"""

HF_VISION = "git.image_encoder.vision_model."
HF_BLOCK = "git.encoder.layer.{i}."

NAME_MAP: dict[str, str] = {
    # CLIP ViT image encoder
    HF_VISION + "embeddings.patch_embedding": "vision.patch_embed",
    HF_VISION + "embeddings.class_embedding": "vision.cls_token",
    HF_VISION + "embeddings.position_embedding.weight": "vision.pos_embed",
    HF_VISION + "pre_layrnorm": "vision.ln_pre",  # sic: "layrnorm" in transformers
    HF_VISION + "encoder.layers.{i}.layer_norm1": "vision.blocks.{i}.ln_1",
    HF_VISION + "encoder.layers.{i}.self_attn.q_proj": "vision.blocks.{i}.attn.q_proj",
    HF_VISION + "encoder.layers.{i}.self_attn.k_proj": "vision.blocks.{i}.attn.k_proj",
    HF_VISION + "encoder.layers.{i}.self_attn.v_proj": "vision.blocks.{i}.attn.v_proj",
    HF_VISION + "encoder.layers.{i}.self_attn.out_proj": "vision.blocks.{i}.attn.out_proj",
    HF_VISION + "encoder.layers.{i}.layer_norm2": "vision.blocks.{i}.ln_2",
    HF_VISION + "encoder.layers.{i}.mlp.fc1": "vision.blocks.{i}.mlp.fc1",
    HF_VISION + "encoder.layers.{i}.mlp.fc2": "vision.blocks.{i}.mlp.fc2",
    HF_VISION + "post_layernorm": "vision.ln_post",
    # visual projection (+ temporal embeddings of video checkpoints)
    "git.visual_projection.visual_projection.0": "img_proj.fc",
    "git.visual_projection.visual_projection.1": "img_proj.ln",
    "git.img_temporal_embedding.{i}": "img_proj.temporal_embed.{i}",
    # text embeddings
    "git.embeddings.word_embeddings": "embed.tok_embed",
    "git.embeddings.position_embeddings": "embed.pos_embed",
    "git.embeddings.LayerNorm": "embed.ln",
    # post-LN BERT decoder blocks
    HF_BLOCK + "attention.self.query": "blocks.{i}.attn.q_proj",
    HF_BLOCK + "attention.self.key": "blocks.{i}.attn.k_proj",
    HF_BLOCK + "attention.self.value": "blocks.{i}.attn.v_proj",
    HF_BLOCK + "attention.output.dense": "blocks.{i}.attn.out_proj",
    HF_BLOCK + "attention.output.LayerNorm": "blocks.{i}.ln_1",
    HF_BLOCK + "intermediate.dense": "blocks.{i}.mlp.fc1",
    HF_BLOCK + "output.dense": "blocks.{i}.mlp.fc2",
    HF_BLOCK + "output.LayerNorm": "blocks.{i}.ln_2",
    # LM head
    "output": "lm_head",
}

# Read, never written: transformers' earlier spelling, which its convert_git_to_pytorch.py wrote into the
# video checkpoints it converted. transformers now names the parameter img_temporal_embedding and renames
# nothing on load: it reports the old keys as unexpected and leaves the temporal embeddings uninitialised
# (seen with 5.24). Kept apart from NAME_MAP so that NAME_MAP stays one-to-one (its inverse is --to-hf).
HF_LEGACY: dict[str, str] = {
    "git.img_temperal_embedding.{i}": "img_proj.temporal_embed.{i}",  # sic: "temperal"
}

# Source keys dropped on purpose: non-persistent buffers that older checkpoints (e.g. the published
# microsoft/git-base-coco pytorch_model.bin) still carry. They hold arange() values, no learned weights.
DROPPED: tuple[str, ...] = (
    "git.embeddings.position_ids",
    HF_VISION + "embeddings.position_ids",
)
