"""Reference implementations and helpers for the attention-variant tests (relative positions, local blocks).

The naive relative logits gather an L x L x Dh tensor of embeddings (Shaw et al. 2018): the model never does this,
only the tests, to check the skewed computation against it.
"""

import torch
from model_utils import tiny_config

from hf_transformer import VaswaniForCausalLM, VaswaniForConditionalGeneration

VARIANTS = {
    "relative": dict(position_embedding_type="relative", max_relative_position=6),
    "local": dict(attention_type="local", local_block_length=4, local_memory_length=3),
    "relative+local": dict(
        position_embedding_type="relative",
        max_relative_position=5,
        relative_attention_per_head=False,
        attention_type="local",
        local_block_length=3,
        local_memory_length=4,
    ),
}


def naive_relative_logits(
    query: torch.Tensor, table: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor
) -> torch.Tensor:
    """S_rel[b, h, i, j] = q_i . e_clip(k_j - q_i) by gathering (T, Lk, Dh) embeddings per table (quadratic).

    query: (B, H, T, Dh); table: (H or 1, 2K + 1, Dh); positions: (T,) and (Lk,). Returns (B, H, T, Lk)."""
    max_distance = (table.shape[1] - 1) // 2
    distances = key_positions[None, :] - query_positions[:, None]  # (T, Lk)
    index = distances.clamp(-max_distance, max_distance) + max_distance
    gathered = table[:, index]  # (H or 1, T, Lk, Dh)
    return torch.einsum("bhid,hijd->bhij", query, gathered.expand(query.shape[1], -1, -1, -1))


def local_keep(query_positions: torch.Tensor, key_positions: torch.Tensor, block: int, memory: int, causal: bool):
    """The explicit (T, Lk) boolean mask of local attention: query q sees keys from block_start(q) - memory to its
    block's end (causal: to q itself; encoder: to block end + memory - 1)."""
    start = query_positions // block * block  # (T,)
    low = (start - memory)[:, None]
    high = query_positions[:, None] if causal else (start + block - 1 + memory)[:, None]
    keys = key_positions[None, :]
    return (keys >= low) & (keys <= high)


# Random tiny models mostly repeat one token; pre-LN, an untied output layer and a wider embedding init make their
# greedy and beam outputs change from step to step (checked in the tests), so cache bugs cannot hide.
VARIED = dict(init_std=0.3, normalize_before=True, tie_word_embeddings=False)


def varied_seq2seq(seed: int = 0, **overrides) -> VaswaniForConditionalGeneration:
    torch.manual_seed(seed)
    return VaswaniForConditionalGeneration(tiny_config(**{**VARIED, **overrides})).eval()


def varied_causal_lm(seed: int = 0, **overrides) -> VaswaniForCausalLM:
    torch.manual_seed(seed)
    return VaswaniForCausalLM(tiny_config(is_encoder_decoder=False, **{**VARIED, **overrides})).eval()


def assert_cached_generation_is_uncached_generation(model, **inputs) -> None:
    """Greedy and beam-4 decoding give the same tokens with and without the KV cache, and they are not trivial
    (several distinct new tokens, rows that differ)."""
    prompt_length = inputs["input_ids"].shape[1] if not model.config.is_encoder_decoder else 1
    for strategy in (dict(num_beams=1), dict(num_beams=4, num_return_sequences=2)):
        cached = model.generate(**inputs, **strategy, do_sample=False, max_new_tokens=12, use_cache=True)
        uncached = model.generate(**inputs, **strategy, do_sample=False, max_new_tokens=12, use_cache=False)
        assert torch.equal(cached, uncached), (strategy, cached, uncached)
        new_tokens = cached[:, prompt_length:]
        assert len(set(new_tokens.flatten().tolist())) >= 5 and len(set(map(tuple, new_tokens.tolist()))) > 1
