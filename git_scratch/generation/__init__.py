"""Generation: the model's own blocks over a KV cache, in two named stages (prefill, decode_step), and the
searches that drive them (greedy, sampling, beam search, the original GIT's beam search)."""
