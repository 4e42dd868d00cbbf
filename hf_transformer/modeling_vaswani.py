"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017) as a Hugging Face model.

Read top to bottom in the paper's order:
    §3.4 / §3.5   embeddings scaled by sqrt(d_model), sinusoidal (or learned) positions
    §3.2          scaled dot-product and multi-head attention, its masks, the attention backends
    §3.3 / §3.1   position-wise feed-forward network, encoder and decoder layers (post-LN or pre-LN)
    §3.1          the two stacks
    §3.4          the shared embedding, the tied output projection and the loss
This file imports only torch and transformers: it is copied next to the weights for `trust_remote_code`.

Notation in shape comments: B batch, S source length, T target length, P cached (past) length,
D = d_model, H heads, Dh = D / H, V vocabulary.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithPast,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_vaswani import VaswaniConfig


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing: the decoder reads <s> y_1 ... y_{T-1} and predicts y_1 ... y_T (§3.1, "shifted right")."""
    decoder_input_ids = labels.new_full(labels.shape, pad_token_id)
    decoder_input_ids[:, 1:] = labels[:, :-1]
    decoder_input_ids[:, 0] = decoder_start_token_id
    return decoder_input_ids.masked_fill(decoder_input_ids == -100, pad_token_id)


# ----------------------------------------------------------------------------------------------------------------
# §3.5 Positional encoding
# ----------------------------------------------------------------------------------------------------------------


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(pos / 10000^(2i/D)), interleaved as in §3.5."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # (L, 1)
    two_i = torch.arange(0, dim, 2, dtype=torch.float64)  # (ceil(D/2),)
    angle = position / torch.pow(10000.0, two_i / dim)  # (L, ceil(D/2))
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return table.float()


class VaswaniSinusoidalPositionalEmbedding(nn.Module):
    """A fixed table of sinusoids (§3.5), kept as a non-persistent buffer: it is never saved, always rebuilt."""

    def __init__(self, num_positions: int, embedding_dim: int):
        super().__init__()
        self.num_positions = num_positions
        self.embedding_dim = embedding_dim
        self.register_buffer("weight", sinusoidal_table(num_positions, embedding_dim), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.weight[position_ids]


def check_positions(length: int, config: VaswaniConfig, side: str) -> None:
    """Fail with a clear message instead of an index error deep inside the embedding lookup."""
    if length > config.max_position_embeddings:
        raise ValueError(
            f"The {side} sequence has {length} positions but the model has `max_position_embeddings`="
            f"{config.max_position_embeddings}. Truncate the input (e.g. tokenizer(..., truncation=True, "
            f"max_length={config.max_position_embeddings})) or build the model with a larger `max_position_embeddings`."
        )


def check_source_ids(input_ids: torch.Tensor, vocab_size: int, check_values: bool) -> None:
    """An empty source, or ids outside the vocabulary, fail here with a clear message instead of a reshape error or
    an index error (a device-side assert on CUDA) inside the kernels. The id range costs a host sync, so it is
    checked only when `check_values` (evaluation and generate(); training ids come from the model's own tokenizer)."""
    if input_ids.shape[-1] == 0:
        raise ValueError("The source `input_ids` are empty (0 tokens): every source needs at least its `</s>`.")
    if check_values and bool(((input_ids < 0) | (input_ids >= vocab_size)).any()):
        raise ValueError(
            f"The source `input_ids` hold ids outside [0, {vocab_size - 1}] (min {int(input_ids.min())}, max "
            f"{int(input_ids.max())}): the tokenizer does not belong to this model (`vocab_size`={vocab_size})."
        )


# ----------------------------------------------------------------------------------------------------------------
# §3.2 Attention: masks, the eager kernel, multi-head attention
# ----------------------------------------------------------------------------------------------------------------
# Masks are additive float tensors broadcastable to (B, H, T_q, T_k): 0 where a query may look, the dtype's most
# negative value where it may not (the paper's -inf, §3.2.3, without NaN on fully masked rows). `None` means
# "no mask", which keeps SDPA's flash / memory-efficient kernels eligible; decoder self-attention then passes
# `is_causal=True` instead of a materialised triangle.


def has_padding(attention_mask: torch.Tensor | None) -> bool:
    """Whether a (B, L) mask hides any position. Reading its values is a host sync that torch.compile cannot trace
    (a graph break), so while compiling a given mask always counts as padded and the explicit mask is built."""
    if attention_mask is None:
        return False
    return torch.compiler.is_compiling() or not bool(attention_mask.all())


def padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, S) with 1 = token, 0 = padding -> additive (B, 1, 1, S), or None when nothing is padded."""
    if not has_padding(attention_mask):
        return None
    keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def causal_mask(
    query_length: int,
    past_length: int,
    attention_mask: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Decoder self-attention (§3.2.3): query t (absolute position past_length + t) sees keys <= its position.

    attention_mask: optional (B, P + T) decoder padding mask. Returns additive (B or 1, 1, T, P + T).
    """
    key_length = past_length + query_length
    query_positions = torch.arange(past_length, key_length, device=device)[:, None]  # (T, 1)
    key_positions = torch.arange(key_length, device=device)[None, :]  # (1, P + T)
    keep = (key_positions <= query_positions)[None, None]  # (1, 1, T, P + T)
    if attention_mask is not None:
        keep = keep & attention_mask.bool()[:, None, None, :key_length]  # (B, 1, T, P + T)
    return torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(Dh) + mask) V, §3.2.1. Same signature and semantics as the library's SDPA backend.

    query: (B, H, T_q, Dh); key, value: (B, H, T_k, Dh). Returns (B, T_q, H, Dh) and the weights (B, H, T_q, T_k).
    """
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, T_q, T_k)
    if attention_mask is None and is_causal and query.shape[2] > 1:
        attention_mask = causal_mask(query.shape[2], key.shape[2] - query.shape[2], None, scores.dtype, scores.device)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # softmax over keys, per row
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value)  # (B, H, T_q, Dh)
    return output.transpose(1, 2).contiguous(), weights  # (B, T_q, H, Dh)


# Attention variants (self-attention only; cross-attention is always the content-only attention above). Both
# enter the kernel through its additive mask, so the eager and sdpa backends compute the same thing:
# - relative positions (Shaw et al. 2018; Music Transformer, Huang et al. 2018): logits + q_i . e_clip(j - i),
#   computed with the skewing trick in O(L Dh) extra memory besides the logits themselves;
# - local 1D blocks (Image Transformer, Parmar et al. 2018, §3.2 there): queries in blocks of l_q, each block sees a
#   window of keys around it; the blocks go through the kernel as a batch, so the cost is linear in L.


def skew(logits: torch.Tensor, key_length: int) -> torch.Tensor:
    """Music Transformer's skewing, generalised to queries at P..P+T-1 and any key range.

    logits: (..., T, M) where column c holds query i's logit for the relative distance c - (P + T - 1) (the lowest
    distance comes first). Returns (..., T, key_length) where entry [i, j] is the logit for distance j - (P + i).
    Pad one column on the left, flatten, drop the first T entries and read the rest as T rows of M: row i is then
    shifted left by T - 1 - i columns. Entries whose distance lies outside the M columns (above the diagonal of the
    causal case) hold values of the next row: the caller masks them.
    """
    *batch, query_length, columns = logits.shape
    padded = nn.functional.pad(logits, (1, 0))  # (..., T, M + 1)
    flat = padded.reshape(*batch, query_length * (columns + 1))  # (..., T (M + 1))
    return flat[..., query_length:].view(*batch, query_length, columns)[..., :key_length]  # (..., T, Lk)


class VaswaniRelativePositionEmbedding(nn.Module):
    """E_r: one learned vector of size Dh per clipped relative distance in [-K, K] (K = `max_relative_position`),
    one table per head or one shared by all heads (`relative_attention_per_head`)."""

    def __init__(self, config: VaswaniConfig, num_heads: int, head_dim: int):
        super().__init__()
        self.max_distance = config.max_relative_position
        tables = num_heads if config.relative_attention_per_head else 1
        self.weight = nn.Parameter(torch.empty(tables, 2 * self.max_distance + 1, head_dim))  # (H or 1, 2K + 1, Dh)

    def forward(self, query: torch.Tensor, past_length: int, key_length: int, causal: bool) -> torch.Tensor:
        """S_rel[b, h, i, j] = q_i . e_clip(j - (P + i)) for queries (B, H, T, Dh) at positions P..P+T-1 and keys at
        0..key_length-1. Returns (B, H, T, key_length), unscaled. Causal attention needs distances <= 0 only."""
        query_length = query.shape[2]
        lowest = -(past_length + query_length - 1)
        highest = 0 if causal else key_length - 1 - past_length
        distances = torch.arange(lowest, highest + 1, device=query.device)  # (M,), M = highest - lowest + 1
        index = distances.clamp(-self.max_distance, self.max_distance) + self.max_distance  # clipping (Shaw §3.2)
        embeddings = self.weight[:, index].to(query.dtype)  # (H or 1, M, Dh): the only O(L Dh) extra memory
        logits = torch.matmul(query, embeddings.transpose(-1, -2))  # Q E_r^T: (B, H, T, M), by relative distance
        return skew(logits, key_length)  # (B, H, T, Lk), by absolute key position


def local_windows(states: torch.Tensor, first_block: int, num_blocks: int, block: int, before: int, after: int):
    """Cut (B, H, L, X) along L into the key/value windows of `num_blocks` query blocks of length `block`, starting
    with block `first_block`: window b covers positions (first_block + b) * block - before ...
    (first_block + b + 1) * block + after - 1, zero-padded outside 0..L-1. Returns (B, H, nblocks, W, X),
    W = before + block + after; memory (B H L W X / block): linear in L."""
    length = states.shape[2]
    start = first_block * block - before
    end = (first_block + num_blocks) * block + after
    inside = states[:, :, max(start, 0) : min(end, length)]
    padded = nn.functional.pad(inside, (0, 0, max(-start, 0), max(end - length, 0)))  # (B, H, nb*block + W-block, X)
    windows = padded.unfold(2, before + block + after, block)  # a view: (B, H, nb, X, W)
    return windows.transpose(-1, -2)  # (B, H, nb, W, X)


class VaswaniAttention(nn.Module):
    """Multi-head attention, §3.2.2: H heads of size Dh = D / H, projected by W^Q, W^K, W^V, concatenated, W^O.

    The three uses (§3.2.3) differ only in their inputs and masks: encoder self-attention, causal decoder
    self-attention (with a KV cache at inference), and encoder-decoder attention whose keys/values come from the
    encoder output and are computed once per generation. The kernel comes from the library's attention
    interface under the name the config carries (`attn_implementation="eager"` or `"sdpa"`, switchable with
    `model.set_attn_implementation`); both take the same additive mask and give the same result.
    Self-attention may use the variants of the config (`position_embedding_type="relative"`,
    `attention_type="local"`); `causal` marks decoder self-attention (one-sided windows, distances <= 0).
    """

    def __init__(
        self,
        config: VaswaniConfig,
        num_heads: int,
        is_cross_attention: bool,
        layer_idx: int | None,
        causal: bool = False,
    ):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = config.d_model // num_heads
        self.scaling = self.head_dim**-0.5  # 1 / sqrt(Dh), §3.2.1
        self.dropout = config.attention_dropout
        self.is_cross_attention = is_cross_attention
        self.layer_idx = layer_idx
        self.is_causal = False  # causality is passed per call: only decoder self-attention over > 1 query uses it
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)
        # The variants, chosen once; cross-attention is always full and content-only.
        self.causal = causal
        self.local = config.attention_type == "local" and not is_cross_attention
        self.block_length = config.local_block_length
        self.memory_length = config.local_memory_length
        self.relative_position_embedding = (
            VaswaniRelativePositionEmbedding(config, num_heads, self.head_dim)
            if config.position_embedding_type == "relative" and not is_cross_attention
            else None
        )

    def split_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        key_value_states: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        is_causal: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states: (B, T, D) queries; key_value_states: (B, S, D) encoder output for cross-attention;
        past_key_values: an EncoderDecoderCache, or a DynamicCache for the decoder-only model."""
        batch, length, _ = hidden_states.shape
        query = self.split_heads(self.q_proj(hidden_states))  # (B, H, T, Dh)

        if self.is_cross_attention:
            cache = past_key_values.cross_attention_cache if past_key_values is not None else None
            if cache is not None and past_key_values.is_updated.get(self.layer_idx):
                # Encoder keys/values were projected at the first decoding step; reuse them.
                key, value = cache.layers[self.layer_idx].keys, cache.layers[self.layer_idx].values
            else:
                key = self.split_heads(self.k_proj(key_value_states))  # (B, H, S, Dh)
                value = self.split_heads(self.v_proj(key_value_states))  # (B, H, S, Dh)
                if cache is not None:
                    key, value = cache.update(key, value, self.layer_idx)
                    past_key_values.is_updated[self.layer_idx] = True
        else:
            key = self.split_heads(self.k_proj(hidden_states))  # (B, H, T, Dh)
            value = self.split_heads(self.v_proj(hidden_states))  # (B, H, T, Dh)
            if past_key_values is not None:  # append this step to the cache: (B, H, P + T, Dh)
                cache = past_key_values
                if isinstance(cache, EncoderDecoderCache):
                    cache = cache.self_attention_cache
                key, value = cache.update(key, value, self.layer_idx)

        # `_attn_implementation` is the config attribute the attention interface is keyed by (there is no public one)
        implementation = self.config._attn_implementation or "eager"
        if output_attentions:  # only the eager kernel materialises the weights
            implementation = "eager"
        attention_fn: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        dropout = self.dropout if self.training else 0.0
        if self.local:
            output, weights = self.local_attention(
                attention_fn, query, key, value, attention_mask, dropout, output_attentions
            )
        else:
            if self.relative_position_embedding is not None:
                past_length = key.shape[2] - length  # self-attention: the T queries are the last T positions
                attention_mask = self.relative_bias(query, past_length, key.shape[2], attention_mask, is_causal)
                is_causal = False
            output, weights = attention_fn(
                self,
                query,
                key,
                value,
                attention_mask,
                dropout=dropout,
                scaling=self.scaling,
                is_causal=is_causal,
            )
        output = output.reshape(batch, length, self.num_heads * self.head_dim)  # concat heads: (B, T, D)
        return self.out_proj(output), (weights if output_attentions else None)

    def relative_bias(
        self,
        query: torch.Tensor,
        past_length: int,
        key_length: int,
        attention_mask: torch.Tensor | None,
        is_causal: bool,
    ) -> torch.Tensor:
        """The mask plus S_rel / sqrt(Dh) (Music Transformer: softmax((Q K^T + S_rel) / sqrt(Dh)) V): (B, H, T, Lk)
        for queries at positions P..P+T-1 and keys at 0..Lk-1."""
        query_length = query.shape[2]
        bias = self.relative_position_embedding(query, past_length, key_length, self.causal) * self.scaling
        if is_causal:  # a float bias rules out SDPA's `is_causal` flag: materialise the triangle (§3.2.3)
            attention_mask = causal_mask(query_length, past_length, None, bias.dtype, bias.device)
        return bias if attention_mask is None else bias + attention_mask

    def local_attention(
        self,
        attention_fn: Callable,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float,
        output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image Transformer 1D local self-attention, blocked so that time and memory are linear in the length.

        query: (B, H, T, Dh) at positions P..P+T-1; key, value: (B, H, P + T, Dh); attention_mask: additive key
        padding (B, 1, 1, P + T) or None. The query block of positions b l_q ... b l_q + l_q - 1 sees the keys from
        b l_q - l_m up to its own end, causally inside (decoder), or up to l_m positions past its end (encoder).
        Returns (B, T, H, Dh) and, when asked, the weights spread out to (B, H, T, P + T).
        """
        batch, heads, query_length, head_dim = query.shape
        key_length = key.shape[2]
        past_length = key_length - query_length
        block, before = self.block_length, self.memory_length
        after = 0 if self.causal else self.memory_length
        if attention_mask is not None and attention_mask.shape[-2] != 1:
            raise ValueError("Local attention takes a key padding mask (B, 1, 1, L), not a (B, 1, T, L) mask.")

        if self.causal and query_length == 1 and not output_attentions:
            # One generation step at position p: its window is simply the keys block_start(p) - l_m ... p.
            start = max(past_length // block * block - before, 0)
            key, value = key[:, :, start:], value[:, :, start:]  # (B, H, W', Dh)
            mask = None if attention_mask is None else attention_mask[..., start:]
            if self.relative_position_embedding is not None:
                mask = self.relative_bias(query, past_length - start, key_length - start, mask, False)
            output, _ = attention_fn(
                self, query, key, value, mask, dropout=dropout, scaling=self.scaling, is_causal=False
            )
            return output, None

        first = past_length // block  # the block of position P
        num_blocks = (key_length - 1) // block - first + 1
        lead = past_length - first * block  # query slots of the first block before position P
        window = before + block + after
        # Queries padded to whole blocks, the blocks going to the kernel as batch entries: (B nb, H, l_q, Dh).
        padded = nn.functional.pad(query, (0, 0, lead, num_blocks * block - lead - query_length))  # (B, H, nb l_q, Dh)
        blocked_query = padded.view(batch, heads, num_blocks, block, head_dim).transpose(1, 2)  # (B, nb, H, l_q, Dh)
        blocked_query = blocked_query.reshape(batch * num_blocks, heads, block, head_dim)
        blocked_key, blocked_value = (
            local_windows(states, first, num_blocks, block, before, after)  # (B, H, nb, W, Dh)
            .transpose(1, 2)
            .reshape(batch * num_blocks, heads, window, head_dim)  # (B nb, H, W, Dh)
            for states in (key, value)
        )

        # Which (query slot i, window slot w) pairs may attend: the key exists (0 <= position < P + T), it is not
        # padding, and in the decoder it is not after the query (w - l_m <= i).
        arange = torch.arange(max(window, num_blocks), device=query.device)
        key_positions = (first + arange[:num_blocks, None]) * block - before + arange[None, :window]  # (nb, W)
        keep = ((key_positions >= 0) & (key_positions < key_length))[None, :, None, :]  # (1, nb, 1, W)
        if self.causal:
            keep = keep & (arange[None, :window] - before <= arange[:block, None])  # (1, nb, l_q, W)
        if attention_mask is not None:
            not_padding = (attention_mask[:, :, 0, :, None] == 0).to(query.dtype)  # (B, 1, P + T, 1)
            not_padding = local_windows(not_padding, first, num_blocks, block, before, after)  # (B, 1, nb, W, 1)
            keep = keep & (not_padding[:, 0, :, None, :, 0] > 0)  # (B, nb, l_q or 1, W)
        mask = torch.zeros(keep.shape, dtype=query.dtype, device=query.device)
        mask = mask.masked_fill(~keep, torch.finfo(query.dtype).min).expand(batch, num_blocks, block, window)
        mask = mask.reshape(batch * num_blocks, 1, block, window)  # (B nb, 1, l_q, W): linear in L
        if self.relative_position_embedding is not None:
            # key slot w of any block is at distance w - l_m - i from query slot i: the rectangular case, P = l_m
            mask = self.relative_bias(blocked_query, before, window, mask, False)  # (B nb, H, l_q, W)

        output, weights = attention_fn(
            self,
            blocked_query,
            blocked_key,
            blocked_value,
            mask,
            dropout=dropout,
            scaling=self.scaling,
            is_causal=False,
        )  # (B nb, l_q, H, Dh)
        output = output.reshape(batch, num_blocks * block, heads, head_dim)[:, lead : lead + query_length]
        if not output_attentions:
            return output, None
        # Spread the block weights out to (B, H, T, P + T), for inspection only (this is quadratic).
        blocks = weights.view(batch, num_blocks, heads, block, window)
        frame = weights.new_zeros(batch, heads, num_blocks * block, num_blocks * block + before + after)
        for b in range(num_blocks):
            frame[:, :, b * block : (b + 1) * block, b * block : b * block + window] = blocks[:, b]
        start = first * block - before  # the position of the frame's first column
        low, high = max(start, 0), min(start + frame.shape[-1], key_length)
        dense = weights.new_zeros(batch, heads, query_length, key_length)
        dense[..., low:high] = frame[:, :, lead : lead + query_length, low - start : high - start]
        return output, dense


# ----------------------------------------------------------------------------------------------------------------
# §3.3 Position-wise feed-forward network and §3.1 the layers
# ----------------------------------------------------------------------------------------------------------------
# Each sublayer is wrapped as LayerNorm(x + Dropout(Sublayer(x))) (post-LN, §3.1 and §5.4), or, with
# `normalize_before`, as x + Dropout(Sublayer(LayerNorm(x))) (pre-LN; the stack then ends with a LayerNorm).


class VaswaniLayer(GradientCheckpointingLayer):
    """What both layer kinds share: the position-wise FFN of §3.3, built by the subclass as fc1 / fc2."""

    fc1: nn.Linear
    fc2: nn.Linear

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """FFN(x) = max(0, x W1 + b1) W2 + b2, applied to each position separately and identically."""
        return self.fc2(self.activation_dropout(self.activation_fn(self.fc1(hidden_states))))  # (B, L, D)


class VaswaniEncoderLayer(VaswaniLayer):
    """Self-attention, then the FFN (§3.1, Figure 1 left)."""

    def __init__(self, config: VaswaniConfig, layer_idx: int):
        super().__init__()
        self.normalize_before = config.normalize_before
        self.self_attn = VaswaniAttention(config, config.encoder_attention_heads, False, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.fc1 = nn.Linear(config.d_model, config.encoder_ffn_dim)  # §3.3 position-wise FFN
        self.fc2 = nn.Linear(config.encoder_ffn_dim, config.d_model)
        self.activation_fn = ACT2FN[config.activation_function]
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, attn_weights = self.self_attn(hidden_states, attention_mask, output_attentions=output_attentions)
        hidden_states = residual + self.dropout(hidden_states)
        if not self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)

        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = residual + self.dropout(self.feed_forward(hidden_states))
        if not self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states, attn_weights


class VaswaniDecoderLayer(VaswaniLayer):
    """Masked self-attention, encoder-decoder attention, then the FFN (§3.1, Figure 1 right). A decoder-only
    config (`is_encoder_decoder=False`, [`VaswaniForCausalLM`]) has no encoder-decoder attention."""

    def __init__(self, config: VaswaniConfig, layer_idx: int):
        super().__init__()
        self.normalize_before = config.normalize_before
        self.self_attn = VaswaniAttention(config, config.decoder_attention_heads, False, layer_idx, causal=True)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        if config.is_encoder_decoder:
            self.encoder_attn = VaswaniAttention(config, config.decoder_attention_heads, True, layer_idx)
            self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)
        else:
            self.encoder_attn, self.encoder_attn_layer_norm = None, None
        self.fc1 = nn.Linear(config.d_model, config.decoder_ffn_dim)  # §3.3 position-wise FFN
        self.fc2 = nn.Linear(config.decoder_ffn_dim, config.d_model)
        self.activation_fn = ACT2FN[config.activation_function]
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
        past_key_values: Cache | None = None,
        is_causal: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, self_weights = self.self_attn(
            hidden_states,
            attention_mask,
            past_key_values=past_key_values,
            is_causal=is_causal,
            output_attentions=output_attentions,
        )
        hidden_states = residual + self.dropout(hidden_states)
        if not self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)

        cross_weights = None
        if self.encoder_attn is not None:
            residual = hidden_states
            if self.normalize_before:
                hidden_states = self.encoder_attn_layer_norm(hidden_states)
            hidden_states, cross_weights = self.encoder_attn(
                hidden_states,
                encoder_attention_mask,
                key_value_states=encoder_hidden_states,
                past_key_values=past_key_values,
                output_attentions=output_attentions,
            )
            hidden_states = residual + self.dropout(hidden_states)
            if not self.normalize_before:
                hidden_states = self.encoder_attn_layer_norm(hidden_states)

        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = residual + self.dropout(self.feed_forward(hidden_states))
        if not self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states, self_weights, cross_weights


# ----------------------------------------------------------------------------------------------------------------
# The pretrained-model contract: initialisation, tying, generation defaults
# ----------------------------------------------------------------------------------------------------------------


class VaswaniPreTrainedModel(PreTrainedModel):
    config_class = VaswaniConfig
    config: VaswaniConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False  # the float masks and later attention variants need an additive bias
    _supports_flex_attn = False
    _no_split_modules = ["VaswaniEncoderLayer", "VaswaniDecoderLayer"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, naming the folder or repository when its weights are damaged:
        safetensors' own error (a truncated file, a corrupt header) does not say which file it read."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except Exception as error:
            if type(error).__name__ != "SafetensorError":  # matched by name: this file imports only torch/transformers
                raise
            raise OSError(
                f"The weights of {str(pretrained_model_name_or_path)!r} are truncated or corrupt: its model.safetensors "
                f"(or a shard named in model.safetensors.index.json) cannot be read ({error}). Export or download "
                "the model again (from_pretrained(..., force_download=True) for a Hub copy)."
            ) from error

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """fairseq's initialisation (the paper does not give one): Xavier-uniform projections, zero biases,
        N(0, D^-0.5) embeddings (their scale matches the sqrt(D) multiplier of §3.4), unit LayerNorms."""
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            std = self.config.init_std if self.config.init_std is not None else self.config.d_model**-0.5
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):  # the image encoder's patch projection: one linear map per patch
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, VaswaniSinusoidalPositionalEmbedding):
            # Non-persistent buffer: rebuilt after `from_pretrained` instead of being left uninitialised.
            init.copy_(module.weight, sinusoidal_table(module.num_positions, module.embedding_dim))
        elif isinstance(module, VaswaniRelativePositionEmbedding):  # N(0, Dh^-0.5), as tensor2tensor's E_r
            init.normal_(module.weight, mean=0.0, std=module.weight.shape[-1] ** -0.5)

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        """The encoder and decoder always share one embedding matrix (§3.4); `tie_word_embeddings` only decides
        whether the output projection is tied to it too."""
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        tied = dict(self._tied_weights_keys or {})
        if not self.config.tie_word_embeddings:
            tied.pop("lm_head.weight", None)
        return tied

    def _reorder_cache(self, past_key_values: Cache | None, beam_idx: torch.Tensor) -> Cache | None:
        """Beam search hook of `generate()` (it calls `_reorder_cache` when a model defines one): move the decoder
        self-attention cache to the surviving beams. The encoder keys/values are left alone: a beam never leaves its
        sentence and all beams of a sentence hold the same encoder output, so reordering them would copy identical
        rows; skipping it halves the per-step copy that dominates beam decoding on CPU (benchmarks/decode.py)."""
        if isinstance(past_key_values, EncoderDecoderCache):
            past_key_values.self_attention_cache.reorder_cache(beam_idx)
        elif past_key_values is not None:
            past_key_values.reorder_cache(beam_idx)
        return past_key_values


def default_generation_config(config: VaswaniConfig) -> GenerationConfig:
    """§6.1: beam size 4, length penalty alpha = 0.6; outputs at most input length + 50 (set per call)."""
    return GenerationConfig(
        num_beams=4,
        length_penalty=0.6,
        early_stopping=True,
        max_length=min(256, config.max_position_embeddings),
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )


# ----------------------------------------------------------------------------------------------------------------
# §3.1 The encoder and decoder stacks
# ----------------------------------------------------------------------------------------------------------------


class VaswaniStack(VaswaniPreTrainedModel):
    """What the encoder and decoder share: the embedding of §3.4 / §3.5 and, for pre-LN, a final LayerNorm."""

    def __init__(self, config: VaswaniConfig, embed_tokens: nn.Embedding):
        super().__init__(config)
        self.embed_tokens = embed_tokens  # the shared matrix, owned by VaswaniModel
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        if config.position_embedding_type == "sinusoidal":
            self.embed_positions = VaswaniSinusoidalPositionalEmbedding(config.max_position_embeddings, config.d_model)
        elif config.position_embedding_type == "learned":  # Table 3, row E
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.d_model)
        else:  # "relative": positions enter every self-attention instead (VaswaniRelativePositionEmbedding)
            self.embed_positions = None
        self.dropout = nn.Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(config.d_model) if config.normalize_before else None
        self.gradient_checkpointing = False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def embed(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, past_length: int, side: str
    ) -> torch.Tensor:
        """Dropout(Embedding(x) * sqrt(D) + PE(positions)), §3.4, §3.5, §5.4. Returns (B, L, D).
        With relative positions nothing is added and the length is unbounded."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(f"Pass exactly one of the {side} `input_ids` and `inputs_embeds`.")
        if input_ids is not None and side == "source":
            check_source_ids(input_ids, self.embed_tokens.num_embeddings, check_values=not self.training)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # (B, L, D)
        if self.embed_positions is None:
            return self.dropout(inputs_embeds * self.embed_scale)
        length = inputs_embeds.shape[1]
        check_positions(past_length + length, self.config, side)
        positions = torch.arange(past_length, past_length + length, device=inputs_embeds.device)  # (L,)
        hidden_states = inputs_embeds * self.embed_scale + self.embed_positions(positions).to(inputs_embeds.dtype)
        return self.dropout(hidden_states)


class VaswaniEncoder(VaswaniStack):
    """N identical layers over the source; pads are masked in every self-attention."""

    def __init__(self, config: VaswaniConfig, embed_tokens: nn.Embedding):
        super().__init__(config, embed_tokens)
        self.layers = nn.ModuleList([VaswaniEncoderLayer(config, i) for i in range(config.encoder_layers)])
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput | tuple:
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict

        hidden_states = self.embed(input_ids, inputs_embeds, past_length=0, side="source")  # (B, S, D)
        mask = padding_mask(attention_mask, hidden_states.dtype)  # (B, 1, 1, S) or None

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, mask, output_attentions=output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
            if output_hidden_states:  # the last entry is the stack's output, as in Marian/BART
                all_hidden_states = all_hidden_states[:-1] + (hidden_states,)

        if not return_dict:
            return tuple(v for v in (hidden_states, all_hidden_states, all_attentions) if v is not None)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


class VaswaniDecoder(VaswaniStack):
    """N identical layers over the shifted target, attending to the encoder output; causal self-attention.
    With a decoder-only config (`is_encoder_decoder=False`) it is the whole model of [`VaswaniForCausalLM`]: no
    encoder output, and a DynamicCache instead of an EncoderDecoderCache."""

    def __init__(self, config: VaswaniConfig, embed_tokens: nn.Embedding):
        super().__init__(config, embed_tokens)
        self.layers = nn.ModuleList([VaswaniDecoderLayer(config, i) for i in range(config.decoder_layers)])
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPastAndCrossAttentions | tuple:
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        use_cache = self.config.use_cache if use_cache is None else use_cache
        encoder_decoder = self.config.is_encoder_decoder
        if encoder_decoder and encoder_hidden_states is None:
            raise ValueError("The decoder attends to the encoder output: pass `encoder_hidden_states` (B, S, D).")
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False  # recomputing a layer would append to the cache twice
        if use_cache and past_key_values is None:
            past_key_values = (
                EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
                if encoder_decoder
                else DynamicCache(config=self.config)
            )
        if not use_cache:
            past_key_values = None
        expected_cache = EncoderDecoderCache if encoder_decoder else Cache
        if past_key_values is not None and not isinstance(past_key_values, expected_cache):
            raise TypeError(
                f"`past_key_values` must be an {expected_cache.__name__}, got {type(past_key_values).__name__}; "
                "the tuple format was removed in transformers 5."
            )
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0

        hidden_states = self.embed(input_ids, inputs_embeds, past_length=past_length, side="target")  # (B, T, D)
        query_length = hidden_states.shape[1]
        dtype, device = hidden_states.dtype, hidden_states.device

        # Self-attention mask. Without padding, a fresh sequence uses `is_causal` (no materialised triangle) and a
        # single new token may see the whole cache; every other case gets an explicit (B, 1, T, P + T) mask.
        decoder_padding = has_padding(attention_mask)
        if self.config.attention_type == "local":  # blocked attention cuts its windows from the key padding alone
            self_mask, is_causal = padding_mask(attention_mask, dtype), False  # (B, 1, 1, P + T) or None
        elif not decoder_padding and (past_length == 0 or query_length == 1):
            self_mask, is_causal = None, past_length == 0
        else:
            self_mask, is_causal = causal_mask(query_length, past_length, attention_mask, dtype, device), False
        cross_mask = padding_mask(encoder_attention_mask, dtype)  # (B, 1, 1, S) or None

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_self_attentions = () if output_attentions else None
        all_cross_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, self_weights, cross_weights = layer(
                hidden_states,
                self_mask,
                encoder_hidden_states,
                cross_mask,
                past_key_values=past_key_values,
                is_causal=is_causal,
                output_attentions=output_attentions,
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_self_attentions += (self_weights,)
                all_cross_attentions += (cross_weights,)
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
            if output_hidden_states:
                all_hidden_states = all_hidden_states[:-1] + (hidden_states,)

        if not return_dict:
            values = (hidden_states, past_key_values, all_hidden_states, all_self_attentions, all_cross_attentions)
            return tuple(v for v in values if v is not None)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden_states,
            attentions=all_self_attentions,
            cross_attentions=all_cross_attentions,
        )


# ----------------------------------------------------------------------------------------------------------------
# §3.4 The model: one shared embedding for source, target and (tied) output projection
# ----------------------------------------------------------------------------------------------------------------


def as_encoder_output(encoder_outputs: BaseModelOutput | tuple) -> BaseModelOutput:
    """Precomputed `encoder_outputs` as `generate()` or a caller passes them (a ModelOutput, or the tuple of
    `return_dict=False`: last hidden state, then hidden states and attentions when asked for)."""
    if isinstance(encoder_outputs, BaseModelOutput):
        return encoder_outputs
    return BaseModelOutput(
        last_hidden_state=encoder_outputs[0],
        hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
        attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
    )


class VaswaniModel(VaswaniPreTrainedModel):
    """Encoder-decoder without the output projection; returns the decoder's last hidden states."""

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.encoder = VaswaniEncoder(config, self.shared)
        self.decoder = VaswaniDecoder(config, self.shared)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        self.encoder.set_input_embeddings(value)
        self.decoder.set_input_embeddings(value)

    def get_encoder(self, modality: str | None = None) -> VaswaniEncoder:
        return self.encoder

    def get_decoder(self) -> VaswaniDecoder:
        return self.decoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Seq2SeqModelOutput | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        else:
            encoder_outputs = as_encoder_output(encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            past_key_values=past_key_values,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        outputs = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            past_key_values=decoder_outputs.past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return outputs if return_dict else outputs.to_tuple()


class VaswaniForConditionalGeneration(VaswaniPreTrainedModel, GenerationMixin):
    """The full translation model: encoder-decoder + linear output layer and softmax (§3.4), with `generate()`."""

    _tied_weights_keys = {
        "lm_head.weight": "model.shared.weight",
        "model.encoder.embed_tokens.weight": "model.shared.weight",
        "model.decoder.embed_tokens.weight": "model.shared.weight",
    }

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.model = VaswaniModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()
        self.generation_config = default_generation_config(config)

    def get_encoder(self, modality: str | None = None) -> VaswaniEncoder:
        return self.model.encoder

    def get_decoder(self) -> VaswaniDecoder:
        return self.model.decoder

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Seq2SeqLMOutput | tuple:
        """labels: (B, T) target ids ending with </s>, -100 where no loss is taken; shifted right into the decoder
        inputs when `decoder_input_ids` is not given. Returns logits (B, T, V) and the mean token cross-entropy."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), labels.to(logits.device).view(-1), ignore_index=-100
            )
        result = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return result if return_dict else result.to_tuple()

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)


# ----------------------------------------------------------------------------------------------------------------
# Images in, text out: image captioning with a patch encoder and the same decoder (CS231n lecture 11; ViT patches)
# ----------------------------------------------------------------------------------------------------------------
# The encoder reads the image as a sequence of (image_size / patch_size)^2 patch vectors, in row-major order over
# the patch grid, with the stack's positions (§3.5) added; everything after that is the encoder of §3.1, and the
# decoder, the tied output projection and generate() are those of the translation model.


class VaswaniImageEncoder(VaswaniEncoder):
    """ViT-style encoder: split the image into P x P patches, flatten each, project it linearly to D, add positions,
    dropout, then the N encoder layers (+ the final LayerNorm for pre-LN). No padding: every patch is attended to."""

    main_input_name = "pixel_values"

    def __init__(self, config: VaswaniConfig):
        if config.image_size is None or config.patch_size is None:
            raise ValueError(
                "The image encoder needs `image_size` and `patch_size` in the config (e.g. VaswaniConfig(..., "
                f"image_size=32, patch_size=4)), got image_size={config.image_size!r}, "
                f"patch_size={config.patch_size!r}."
            )
        super().__init__(config, embed_tokens=None)
        # Flatten + linear projection of each patch == a convolution with kernel = stride = P (weights (D, C, P, P)).
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.d_model, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.embed_scale = 1.0  # sqrt(D) compensates the token embeddings' N(0, D^-0.5) init (§3.4), not pixels
        self.post_init()

    def get_input_embeddings(self) -> nn.Conv2d:
        return self.patch_embedding

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Fail with the expected shape instead of a convolution or position error."""
        expected = (self.config.num_channels, self.config.image_size, self.config.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"`pixel_values` must have shape (batch, num_channels, image_size, image_size) = (batch, "
                f"{', '.join(map(str, expected))}) for this model, got {tuple(pixel_values.shape)}. Prepare images "
                f"with the model's image processor (VaswaniImageProcessor / AutoImageProcessor.from_pretrained of "
                f"the model folder), which resizes them to image_size and converts them to num_channels channels."
            )

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput | tuple:
        """pixel_values: (B, C, H, W) normalised images. Returns the encoder states (B, N, D), N = (H / P) * (W / P)."""
        self.check_pixel_values(pixel_values)
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, D, H/P, W/P)
        patches = patches.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major order
        # the stack's embed() adds the positions 0..N-1 (§3.5) and applies dropout; nothing is padded
        return super().forward(
            inputs_embeds=patches,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )


class VaswaniForImageCaptioning(VaswaniPreTrainedModel, GenerationMixin):
    """Image in, caption out: `VaswaniImageEncoder` + the translation model's decoder, with its own token embedding
    tied to the output projection (§3.4). `generate(pixel_values=...)` decodes from `<s>` until `</s>`."""

    main_input_name = "pixel_values"
    input_modalities = ["image", "text"]
    _tied_weights_keys = {"lm_head.weight": "decoder.embed_tokens.weight"}
    _no_split_modules = ["VaswaniEncoderLayer", "VaswaniDecoderLayer"]

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.encoder = VaswaniImageEncoder(config)
        embed_tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.decoder = VaswaniDecoder(config, embed_tokens)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()
        self.generation_config = default_generation_config(config)

    def get_encoder(self, modality: str | None = None) -> VaswaniImageEncoder:
        return self.encoder

    def get_decoder(self) -> VaswaniDecoder:
        return self.decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.decoder.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Seq2SeqLMOutput | tuple:
        """pixel_values: (B, C, H, W); labels: (B, T) caption ids ending with </s>, -100 where no loss is taken
        (shifted right into the decoder inputs when `decoder_input_ids` is not given). Returns logits (B, T, V)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        if encoder_outputs is None:
            if pixel_values is None:
                raise ValueError("Pass `pixel_values` (B, C, H, W) or precomputed `encoder_outputs`.")
            encoder_outputs = self.encoder(
                pixel_values,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        else:
            encoder_outputs = as_encoder_output(encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=None,  # every patch is real: nothing to mask in cross-attention
            past_key_values=past_key_values,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(decoder_outputs.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), labels.to(logits.device).view(-1), ignore_index=-100
            )
        result = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=decoder_outputs.past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return result if return_dict else result.to_tuple()

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)


# ----------------------------------------------------------------------------------------------------------------
# The decoder alone: a causal language model (the Music Transformer's decoder-only setting, Huang et al. 2018)
# ----------------------------------------------------------------------------------------------------------------


class VaswaniForCausalLM(VaswaniPreTrainedModel, GenerationMixin):
    """The decoder stack without encoder and cross-attention, its own token embedding tied to the output
    projection (§3.4), and `generate()` with a DynamicCache. Continuing a prefix (Music Transformer style) is
    `generate(input_ids=prefix)`. Needs a config with `is_encoder_decoder=False`; the attention variants of the
    config (relative positions, local blocks) apply to its self-attention."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: VaswaniConfig):
        if config.is_encoder_decoder:
            raise ValueError(
                "VaswaniForCausalLM is decoder-only: build it from a config with `is_encoder_decoder=False`, "
                "e.g. VaswaniConfig(..., is_encoder_decoder=False)."
            )
        super().__init__(config)
        embed_tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.model = VaswaniDecoder(config, embed_tokens)  # owns the embedding: model.embed_tokens
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()
        self.generation_config = GenerationConfig(
            max_length=min(256, config.max_position_embeddings),
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
        )

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_decoder(self) -> VaswaniDecoder:
        return self.model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CausalLMOutputWithPast | tuple:
        """input_ids: (B, T) tokens following the P cached ones; attention_mask: (B, P + T), 1 = token, 0 = padding.
        labels: (B, T), usually the input ids themselves, -100 where no loss is taken; position t is scored on
        predicting labels[:, t + 1] (the shift happens here, as in the library's causal LMs). Returns logits
        (B, T, V) and the mean next-token cross-entropy."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None:
            use_cache = False
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            shifted_logits = logits[:, :-1].float()  # (B, T - 1, V): predictions for tokens 1..T-1
            shifted_labels = labels[:, 1:].to(logits.device)  # (B, T - 1)
            loss = nn.functional.cross_entropy(
                shifted_logits.reshape(-1, logits.shape[-1]), shifted_labels.reshape(-1), ignore_index=-100
            )
        result = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return result if return_dict else result.to_tuple()


__all__ = [
    "VaswaniPreTrainedModel",
    "VaswaniModel",
    "VaswaniForConditionalGeneration",
    "VaswaniForCausalLM",
    "VaswaniEncoder",
    "VaswaniDecoder",
    "VaswaniImageEncoder",
    "VaswaniForImageCaptioning",
    "shift_tokens_right",
    "sinusoidal_table",
]
