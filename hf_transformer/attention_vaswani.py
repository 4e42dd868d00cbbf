"""§3.2 of "Attention Is All You Need" (Vaswani et al., 2017): masks, the scaled dot-product kernel (§3.2.1),
multi-head attention (§3.2.2), and the two self-attention variants that grew out of it. How the scores are formed:

- content-only attention, softmax(Q K^T / sqrt(Dh) + mask) V, through the library's attention backend (eager
  below, or torch's SDPA);
- relative positions (Shaw et al. 2018; Music Transformer, Huang et al. 2018): the logits gain q_i . e_clip(j - i),
  computed with the skewing trick in O(L Dh) extra memory besides the logits themselves;
- local 1D blocks (Image Transformer, Parmar et al. 2018, §3.2 there): queries in blocks of l_q, each block sees a
  window of keys around it; the blocks go through the kernel as a batch, so the cost is linear in L;
- local 2D blocks (same paper): the sequence laid out on a grid (an image in raster order), queries in rectangles
  of h_q x w_q cells, each seeing a rectangle of memory above and beside it; linear in L too.

The variants enter the kernel through its additive mask, so the eager and SDPA backends compute the same thing.
`select_attention` picks one of `full_attention`, `relative_attention`, `local_attention`, `local_2d_attention` once,
when a `VaswaniAttention` is built; each takes the module (its heads, scaling, causality, block lengths and relative
table) and the projected queries, keys and values. This file imports only torch and transformers:
`save_pretrained` copies it next to the weights for `trust_remote_code`.

Notation: B batch, H heads, T queries at absolute positions P..P+T-1 (P cached positions before them),
Lk = P + T keys, Dh head size.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_vaswani import VaswaniConfig

# ----------------------------------------------------------------------------------------------------------------
# Masks: additive float tensors broadcastable to (B, H, T, Lk): 0 where a query may look, the dtype's most negative
# value where it may not (the paper's -inf, §3.2.3, without NaN on fully masked rows). `None` means "no mask", which
# keeps SDPA's fast kernels eligible; causal attention without a mask is then the kernel's own `is_causal`.
# ----------------------------------------------------------------------------------------------------------------


def has_padding(attention_mask: torch.Tensor | None) -> bool:
    """Whether a (B, L) mask hides any position. Reading its values is a host sync that torch.compile cannot trace
    (a graph break), so while compiling a given mask always counts as padded and the explicit mask is built."""
    if attention_mask is None:
        return False
    return torch.compiler.is_compiling() or not bool(attention_mask.all())


def additive(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean `keep` mask as an additive one: 0 where True, the dtype's most negative value where False."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, S) with 1 = token, 0 = padding -> additive (B, 1, 1, S), or None when nothing is padded."""
    if not has_padding(attention_mask):
        return None
    return additive(attention_mask.bool()[:, None, None, :], dtype)  # (B, 1, 1, S)


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
    return additive(keep, dtype)


# ----------------------------------------------------------------------------------------------------------------
# §3.2.1 Scaled dot-product attention
# ----------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(Dh) + mask) V, §3.2.1. Same signature and semantics as the library's SDPA backend: with
    no mask, a module whose `is_causal` is set attends causally (when it has more than one query).

    query: (B, H, T_q, Dh); key, value: (B, H, T_k, Dh). Returns (B, T_q, H, Dh) and the weights (B, H, T_q, T_k).
    """
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, T_q, T_k)
    if attention_mask is None and getattr(module, "is_causal", False) and query.shape[2] > 1:
        attention_mask = causal_mask(query.shape[2], key.shape[2] - query.shape[2], None, scores.dtype, scores.device)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # softmax over keys, per row
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value)  # (B, H, T_q, Dh)
    return output.transpose(1, 2).contiguous(), weights  # (B, T_q, H, Dh)


def attention_kernel(module: nn.Module, output_attentions: bool) -> Callable:
    """The backend the config names (`attn_implementation="eager"` or `"sdpa"`, switchable with
    `model.set_attn_implementation`); only the eager kernel materialises the weights, so it serves
    `output_attentions`. `_attn_implementation` is the config attribute the library keys its backends by (there is no
    public one)."""
    implementation = "eager" if output_attentions else (module.config._attn_implementation or "eager")
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)


def full_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Content-only attention over every key (§3.2.1): the kernel as it is. Returns (B, T, H, Dh) and the weights."""
    dropout = module.dropout if module.training else 0.0
    return attention_kernel(module, output_attentions)(
        module, query, key, value, attention_mask, dropout=dropout, scaling=module.scaling
    )


# ----------------------------------------------------------------------------------------------------------------
# §3.2.2 Multi-head attention
# ----------------------------------------------------------------------------------------------------------------


class VaswaniAttention(nn.Module):
    """Multi-head attention, §3.2.2: H heads of size Dh = D / H, projected by W^Q, W^K, W^V, concatenated, W^O.

    The three uses (§3.2.3) differ only in their inputs and masks: encoder self-attention, causal decoder
    self-attention (`is_causal`, with a KV cache at inference), and encoder-decoder attention
    (`is_cross_attention`) whose keys/values come from the encoder output and are computed once per generation.
    How the scores are formed is chosen once, here, from the config (attention_vaswani.select_attention): content
    only (§3.2.1), with relative positions, or in local blocks; cross-attention is always content only.
    """

    def __init__(
        self,
        config: VaswaniConfig,
        num_heads: int,
        *,
        layer_idx: int,
        is_causal: bool = False,
        is_cross_attention: bool = False,
    ):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = config.d_model // num_heads
        self.scaling = self.head_dim**-0.5  # 1 / sqrt(Dh), §3.2.1
        self.dropout = config.attention_dropout
        self.layer_idx = layer_idx
        self.is_causal = is_causal  # read by the kernels (ours and the library's) when no mask is given
        self.is_cross_attention = is_cross_attention
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)
        self.attend: Callable = select_attention(config, is_cross_attention)
        self.block_length = config.local_block_length  # l_q and l_m of local attention
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
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states: (B, T, D) queries; key_value_states: (B, S, D) encoder output for cross-attention;
        cache: an EncoderDecoderCache, or a DynamicCache for the decoder-only model. Returns (B, T, D) and the
        weights (B, H, T, T_k) when `output_attentions`."""
        batch, length, _ = hidden_states.shape
        query = self.split_heads(self.q_proj(hidden_states))  # (B, H, T, Dh)

        if self.is_cross_attention:
            cross_cache = cache.cross_attention_cache if cache is not None else None
            if cross_cache is not None and cache.is_updated.get(self.layer_idx):
                # Encoder keys/values were projected at the first decoding step; reuse them.
                key, value = cross_cache.layers[self.layer_idx].keys, cross_cache.layers[self.layer_idx].values
            else:
                key = self.split_heads(self.k_proj(key_value_states))  # (B, H, S, Dh)
                value = self.split_heads(self.v_proj(key_value_states))  # (B, H, S, Dh)
                if cross_cache is not None:
                    key, value = cross_cache.update(key, value, self.layer_idx)
                    cache.is_updated[self.layer_idx] = True
        else:
            key = self.split_heads(self.k_proj(hidden_states))  # (B, H, T, Dh)
            value = self.split_heads(self.v_proj(hidden_states))  # (B, H, T, Dh)
            if cache is not None:  # append this step to the cache: (B, H, P + T, Dh)
                self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
                key, value = self_cache.update(key, value, self.layer_idx)

        output, weights = self.attend(self, query, key, value, attention_mask, output_attentions)  # (B, T, H, Dh)
        output = output.reshape(batch, length, self.num_heads * self.head_dim)  # concat heads: (B, T, D)
        return self.out_proj(output), (weights if output_attentions else None)


# ----------------------------------------------------------------------------------------------------------------
# Variant: relative position self-attention (Shaw et al. 2018), with the Music Transformer's skewing (Huang et al.)
# ----------------------------------------------------------------------------------------------------------------


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

    def forward(self, query: torch.Tensor, past_length: int, key_length: int, is_causal: bool) -> torch.Tensor:
        """S_rel[b, h, i, j] = q_i . e_clip(j - (P + i)) for queries (B, H, T, Dh) at positions P..P+T-1 and keys at
        0..key_length-1. Returns (B, H, T, key_length), unscaled. Causal attention needs distances <= 0 only."""
        query_length = query.shape[2]
        lowest = -(past_length + query_length - 1)
        highest = 0 if is_causal else key_length - 1 - past_length
        distances = torch.arange(lowest, highest + 1, device=query.device)  # (M,), M = highest - lowest + 1
        index = distances.clamp(-self.max_distance, self.max_distance) + self.max_distance  # clipping (Shaw §3.2)
        embeddings = self.weight[:, index].to(query.dtype)  # (H or 1, M, Dh): the only O(L Dh) extra memory
        logits = torch.matmul(query, embeddings.transpose(-1, -2))  # Q E_r^T: (B, H, T, M), by relative distance
        return skew(logits, key_length)  # (B, H, T, Lk), by absolute key position


def relative_bias(
    module: nn.Module,
    query: torch.Tensor,
    past_length: int,
    key_length: int,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """The mask plus S_rel / sqrt(Dh) (Music Transformer: softmax((Q K^T + S_rel) / sqrt(Dh)) V): (B, H, T, Lk) for
    queries at positions P..P+T-1 and keys at 0..Lk-1. A float bias rules out the kernels' own causal flag, so a
    causal module without a mask gets its triangle materialised here (§3.2.3)."""
    query_length = query.shape[2]
    bias = module.relative_position_embedding(query, past_length, key_length, module.is_causal) * module.scaling
    if attention_mask is None and module.is_causal and query_length > 1:
        attention_mask = causal_mask(query_length, past_length, None, bias.dtype, bias.device)
    return bias if attention_mask is None else bias + attention_mask


def relative_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-attention whose logits gain the relative term; the T queries are the last T of the Lk positions."""
    past_length = key.shape[2] - query.shape[2]
    bias = relative_bias(module, query, past_length, key.shape[2], attention_mask)
    return full_attention(module, query, key, value, bias, output_attentions)


# ----------------------------------------------------------------------------------------------------------------
# Variant: local 1D block self-attention (Image Transformer, Parmar et al. 2018)
# ----------------------------------------------------------------------------------------------------------------


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


def local_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image Transformer 1D local self-attention, blocked so that time and memory are linear in the length.

    query: (B, H, T, Dh) at positions P..P+T-1; key, value: (B, H, P + T, Dh); attention_mask: additive key padding
    (B, 1, 1, P + T) or None. The query block of positions b l_q ... b l_q + l_q - 1 sees the keys from b l_q - l_m up
    to its own end, causally inside (decoder), or up to l_m positions past its end (encoder). Combined with relative
    positions when the module has a relative table. Returns (B, T, H, Dh) and, when asked, the weights spread out to
    (B, H, T, P + T).
    """
    if attention_mask is not None and attention_mask.shape[-2] != 1:
        raise ValueError("Local attention takes a key padding mask (B, 1, 1, L), not a (B, 1, T, L) mask.")
    past_length = key.shape[2] - query.shape[2]
    if module.is_causal and query.shape[2] == 1 and not output_attentions:
        # One generation step at position p: its window is simply the keys block_start(p) - l_m ... p.
        start = max(past_length // module.block_length * module.block_length - module.memory_length, 0)
        mask = None if attention_mask is None else attention_mask[..., start:]
        if module.relative_position_embedding is not None:
            mask = relative_bias(module, query, past_length - start, key.shape[2] - start, mask)
        output, _ = full_attention(module, query, key[:, :, start:], value[:, :, start:], mask)
        return output, None
    return blocked_attention(module, query, key, value, attention_mask, output_attentions)


def local_block_mask(
    module: nn.Module, query: torch.Tensor, key_length: int, first: int, num_blocks: int,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Which (query slot i, window slot w) pairs of each block may attend, as an additive (B nb, 1, l_q, W) mask: the
    key exists (0 <= position < P + T), it is not padding, and in the decoder it is not after the query
    (w - l_m <= i). Linear in L."""
    batch = query.shape[0]
    block, before = module.block_length, module.memory_length
    after = 0 if module.is_causal else before
    window = before + block + after
    arange = torch.arange(max(window, num_blocks), device=query.device)
    key_positions = (first + arange[:num_blocks, None]) * block - before + arange[None, :window]  # (nb, W)
    keep = ((key_positions >= 0) & (key_positions < key_length))[None, :, None, :]  # (1, nb, 1, W)
    if module.is_causal:
        keep = keep & (arange[None, :window] - before <= arange[:block, None])  # (1, nb, l_q, W)
    if attention_mask is not None:
        not_padding = (attention_mask[:, :, 0, :, None] == 0).to(query.dtype)  # (B, 1, P + T, 1)
        not_padding = local_windows(not_padding, first, num_blocks, block, before, after)  # (B, 1, nb, W, 1)
        keep = keep & (not_padding[:, 0, :, None, :, 0] > 0)  # (B, nb, l_q or 1, W)
    mask = additive(keep, query.dtype).expand(batch, num_blocks, block, window)
    return mask.reshape(batch * num_blocks, 1, block, window)  # (B nb, 1, l_q, W)


def blocked_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    output_attentions: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`local_attention` over whole blocks: queries padded to whole blocks, the blocks going to the kernel as batch
    entries against their key windows."""
    batch, heads, query_length, head_dim = query.shape
    key_length = key.shape[2]
    past_length = key_length - query_length
    block, before = module.block_length, module.memory_length
    after = 0 if module.is_causal else before
    window = before + block + after
    first = past_length // block  # the block of position P
    num_blocks = (key_length - 1) // block - first + 1
    lead = past_length - first * block  # query slots of the first block before position P
    padded = nn.functional.pad(query, (0, 0, lead, num_blocks * block - lead - query_length))  # (B, H, nb l_q, Dh)
    blocked_query = padded.view(batch, heads, num_blocks, block, head_dim).transpose(1, 2)  # (B, nb, H, l_q, Dh)
    blocked_query = blocked_query.reshape(batch * num_blocks, heads, block, head_dim)  # (B nb, H, l_q, Dh)
    blocked_key, blocked_value = (
        local_windows(states, first, num_blocks, block, before, after)  # (B, H, nb, W, Dh)
        .transpose(1, 2)
        .reshape(batch * num_blocks, heads, window, head_dim)  # (B nb, H, W, Dh)
        for states in (key, value)
    )
    mask = local_block_mask(module, query, key_length, first, num_blocks, attention_mask)  # (B nb, 1, l_q, W)
    if module.relative_position_embedding is not None:
        # key slot w of any block is at distance w - l_m - i from query slot i: the rectangular case with P = l_m
        mask = relative_bias(module, blocked_query, before, window, mask)  # (B nb, H, l_q, W)
    output, weights = full_attention(module, blocked_query, blocked_key, blocked_value, mask, output_attentions)
    output = output.reshape(batch, num_blocks * block, heads, head_dim)[:, lead : lead + query_length]  # (B, T, H, Dh)
    if not output_attentions:
        return output, None
    dense = spread_block_weights(weights, batch, num_blocks, block, before, first, lead, query_length, key_length)
    return output, dense


def spread_block_weights(
    weights: torch.Tensor, batch: int, num_blocks: int, block: int, before: int, first: int, lead: int,
    query_length: int, key_length: int,
) -> torch.Tensor:
    """The block weights (B nb, H, l_q, W) spread out to (B, H, T, P + T), for inspection only (this is quadratic)."""
    heads, window = weights.shape[1], weights.shape[-1]
    blocks = weights.view(batch, num_blocks, heads, block, window)
    frame = weights.new_zeros(batch, heads, num_blocks * block, (num_blocks - 1) * block + window)
    for b in range(num_blocks):
        frame[:, :, b * block : (b + 1) * block, b * block : b * block + window] = blocks[:, b]
    start = first * block - before  # the position of the frame's first column
    low, high = max(start, 0), min(start + frame.shape[-1], key_length)
    dense = weights.new_zeros(batch, heads, query_length, key_length)
    dense[..., low:high] = frame[:, :, lead : lead + query_length, low - start : high - start]
    return dense


# ----------------------------------------------------------------------------------------------------------------
# Variant: local 2D block self-attention (Image Transformer, Parmar et al. 2018, §3.2 there)
# ----------------------------------------------------------------------------------------------------------------
# The sequence lies on a grid of W = `local_grid_width` positions per row (an image in raster order: W = width x
# channels): position p is row p // W, column p % W. Queries go in blocks of h_q x w_q grid cells; a block sees the
# rectangle from h_m rows above it down to its own last row (h_m rows further in the encoder) and from w_m columns
# left of it to w_m columns right of it, in the decoder only what precedes the query in raster order. Every block has
# the same shape, so the blocks go through the kernel as one batch against their key rectangles, as in 1D.


def local_2d_keep(config: VaswaniConfig, query_positions: torch.Tensor, key_positions: torch.Tensor,
                  is_causal: bool) -> torch.Tensor:
    """Which keys each query may see: a (T, Lk) boolean mask of the 2D window (its grid rectangle, and in the decoder
    key <= query). Quadratic: for one decoding step, and for `output_attentions`."""
    width = config.local_grid_width
    rows, columns = config.local_block_rows, config.local_block_columns
    query_row, query_column = (query_positions // width)[:, None], (query_positions % width)[:, None]  # (T, 1)
    key_row, key_column = (key_positions // width)[None, :], (key_positions % width)[None, :]  # (1, Lk)
    top, left = query_row // rows * rows, query_column // columns * columns  # the query block's first cell
    below = 0 if is_causal else config.local_memory_rows
    keep = (key_row >= top - config.local_memory_rows) & (key_row < top + rows + below)
    keep = keep & (key_column >= left - config.local_memory_columns)
    keep = keep & (key_column < left + columns + config.local_memory_columns)
    if is_causal:
        keep = keep & (key_positions[None, :] <= query_positions[:, None])
    return keep  # (T, Lk)


def local_2d_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image Transformer 2D local self-attention (see above), blocked so that time and memory are linear in L.

    query: (B, H, T, Dh) at positions P..P+T-1; key, value: (B, H, P + T, Dh); attention_mask: additive key padding
    (B, 1, 1, P + T) or None. Returns (B, T, H, Dh) and, when asked, the weights (B, H, T, P + T).
    """
    if attention_mask is not None and attention_mask.shape[-2] != 1:
        raise ValueError("Local attention takes a key padding mask (B, 1, 1, L), not a (B, 1, T, L) mask.")
    config = module.config
    past_length, key_length = key.shape[2] - query.shape[2], key.shape[2]
    if output_attentions or (module.is_causal and query.shape[2] == 1):
        # One decoding step (or inspection): the window as an explicit mask over the keys from the first row the
        # query's block can see; for one step that is (h_q + h_m) rows at most.
        first_row = past_length // config.local_grid_width // config.local_block_rows * config.local_block_rows
        start = 0 if output_attentions else max(first_row - config.local_memory_rows, 0) * config.local_grid_width
        positions = torch.arange(key_length, device=query.device)
        keep = local_2d_keep(config, positions[past_length:], positions[start:], module.is_causal)  # (T, Lk - start)
        mask = additive(keep, query.dtype)[None, None]  # (1, 1, T, Lk - start)
        if attention_mask is not None:
            mask = mask + attention_mask[..., start:]
        return full_attention(module, query, key[:, :, start:], value[:, :, start:], mask, output_attentions)
    return blocked_2d_attention(module, query, key, value, attention_mask)


def grid_windows(states: torch.Tensor, config: VaswaniConfig, first_row: int, block_rows: int, block_columns: int,
                 below: int) -> torch.Tensor:
    """The key rectangles of `block_rows` x `block_columns` query blocks whose first grid row is `first_row`.

    states: (B, H, L, X) along the sequence. Returns (B, H, nr, nc, hk wk, X) with hk = h_m + h_q + below and
    wk = w_m + w_q + w_m, zero-padded outside the grid and outside 0..L-1. Linear in L."""
    width, rows, columns = config.local_grid_width, config.local_block_rows, config.local_block_columns
    above, side = config.local_memory_rows, config.local_memory_columns
    length = states.shape[2]
    start, end = (first_row - above) * width, (first_row + block_rows * rows + below) * width
    inside = states[:, :, max(start, 0) : min(end, length)]
    front = max(-start, 0)
    padded = nn.functional.pad(inside, (0, 0, front, end - start - front - inside.shape[2]))  # (B, H, R W, X)
    grid = padded.view(*states.shape[:2], -1, width, states.shape[-1])  # (B, H, R, W, X), R = h_m + nr h_q + below
    grid = nn.functional.pad(grid, (0, 0, side, block_columns * columns - width + side))  # (B, H, R, nc w_q + 2 w_m, X)
    windows = grid.unfold(2, above + rows + below, rows).unfold(3, side + columns + side, columns)
    windows = windows.permute(0, 1, 2, 3, 5, 6, 4)  # (B, H, nr, nc, hk, wk, X)
    return windows.reshape(*windows.shape[:4], -1, states.shape[-1])  # (B, H, nr, nc, hk wk, X)


def blocked_2d_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, None]:
    """`local_2d_attention` over whole blocks: the queries placed on the grid rows from the block row of position P
    to the last one (zeros elsewhere), each block a batch entry against its key rectangle."""
    config = module.config
    batch, heads, query_length, head_dim = query.shape
    key_length = key.shape[2]
    past_length = key_length - query_length
    width, rows, columns = config.local_grid_width, config.local_block_rows, config.local_block_columns
    below = 0 if module.is_causal else config.local_memory_rows
    first_row = past_length // width // rows * rows  # first grid row of the block row holding position P
    block_rows = -(-(key_length - first_row * width) // (rows * width))  # nr, ceil
    block_columns = -(-width // columns)  # nc, ceil
    lead = past_length - first_row * width  # grid cells before position P in the first block row
    cells = block_rows * rows * width
    on_grid = nn.functional.pad(query, (0, 0, lead, cells - lead - query_length))  # (B, H, nr h_q W, Dh)
    on_grid = nn.functional.pad(on_grid.view(batch, heads, block_rows * rows, width, head_dim),
                                (0, 0, 0, block_columns * columns - width))  # (B, H, nr h_q, nc w_q, Dh)
    blocked_query = on_grid.view(batch, heads, block_rows, rows, block_columns, columns, head_dim)
    blocked_query = blocked_query.permute(0, 2, 4, 1, 3, 5, 6)  # (B, nr, nc, H, h_q, w_q, Dh)
    blocked_query = blocked_query.reshape(-1, heads, rows * columns, head_dim)  # (B nr nc, H, h_q w_q, Dh)
    blocked_key, blocked_value = (
        grid_windows(states, config, first_row, block_rows, block_columns, below)  # (B, H, nr, nc, hk wk, Dh)
        .permute(0, 2, 3, 1, 4, 5)
        .reshape(blocked_query.shape[0], heads, -1, head_dim)  # (B nr nc, H, hk wk, Dh)
        for states in (key, value)
    )
    mask = local_2d_block_mask(module, query, key_length, first_row, block_rows, block_columns, attention_mask)
    output, _ = full_attention(module, blocked_query, blocked_key, blocked_value, mask)  # (B nr nc, h_q w_q, H, Dh)
    output = output.reshape(batch, block_rows, block_columns, rows, columns, heads, head_dim)
    output = output.permute(0, 1, 3, 2, 4, 5, 6).reshape(batch, block_rows * rows, -1, heads, head_dim)
    output = output[:, :, :width].reshape(batch, cells, heads, head_dim)  # (B, nr h_q W, H, Dh): back in raster order
    return output[:, lead : lead + query_length], None  # (B, T, H, Dh)


def local_2d_block_mask(
    module: nn.Module, query: torch.Tensor, key_length: int, first_row: int, block_rows: int, block_columns: int,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Which (query cell, key cell) pairs of each block may attend, as an additive (B nr nc, 1, h_q w_q, hk wk) mask:
    the key cell is on the grid and holds a position (0 <= position < P + T), it is not padding, and in the decoder it
    does not follow the query. Linear in L."""
    config = module.config
    width, rows, columns = config.local_grid_width, config.local_block_rows, config.local_block_columns
    below = 0 if module.is_causal else config.local_memory_rows
    positions = torch.arange(1, key_length + 1, device=query.device)[None, None, :, None]  # position + 1
    # the key position of every cell of every rectangle, -1 in the padding cells: (1, nr, nc, hk wk)
    key_positions = grid_windows(positions, config, first_row, block_rows, block_columns, below)[:, 0, ..., 0] - 1
    row = torch.arange(block_rows * rows, device=query.device) + first_row
    column = torch.arange(block_columns * columns, device=query.device)
    query_positions = row[:, None] * width + column[None, :]  # (nr h_q, nc w_q)
    query_positions = query_positions.view(block_rows, rows, block_columns, columns).permute(0, 2, 1, 3)
    query_positions = query_positions.reshape(1, block_rows, block_columns, rows * columns, 1)  # (1, nr, nc, q, 1)
    keep = (key_positions >= 0)[:, :, :, None, :]  # (1, nr, nc, 1, hk wk): a real key cell
    if module.is_causal:
        keep = keep & (key_positions[:, :, :, None, :] <= query_positions)  # (1, nr, nc, q, hk wk)
    if attention_mask is not None:
        not_padding = (attention_mask[:, :, 0, :, None] == 0).to(query.dtype)  # (B, 1, P + T, 1)
        not_padding = grid_windows(not_padding, config, first_row, block_rows, block_columns, below)[:, 0, ..., 0]
        keep = keep[0] & (not_padding[:, :, :, None, :] > 0)  # (B, nr, nc, q or 1, hk wk)
    mask = additive(keep, query.dtype)
    mask = mask.expand(query.shape[0], block_rows, block_columns, rows * columns, mask.shape[-1])
    return mask.reshape(-1, 1, rows * columns, mask.shape[-1])  # (B nr nc, 1, h_q w_q, hk wk)


# ----------------------------------------------------------------------------------------------------------------
# The switch: one variant per attention module, chosen when it is built
# ----------------------------------------------------------------------------------------------------------------


def select_attention(config: VaswaniConfig, is_cross_attention: bool) -> Callable:
    """`full_attention`, `relative_attention`, `local_attention` (which adds the relative term itself when the
    config asks for both) or `local_2d_attention`. Cross-attention is always full and content-only. The config has
    already checked `attention_type` and `position_embedding_type`; an unknown value here is a programming error."""
    if is_cross_attention:
        return full_attention
    if config.attention_type not in ("full", "local", "local_2d"):
        raise ValueError(
            f"`attention_type` must be one of ['full', 'local', 'local_2d'], got {config.attention_type!r}."
        )
    if config.attention_type == "local":
        return local_attention
    if config.attention_type == "local_2d":
        return local_2d_attention
    return relative_attention if config.position_embedding_type == "relative" else full_attention


__all__ = [
    "VaswaniAttention",
    "has_padding",
    "padding_mask",
    "causal_mask",
    "eager_attention_forward",
    "skew",
    "VaswaniRelativePositionEmbedding",
    "local_windows",
    "local_2d_keep",
    "grid_windows",
    "select_attention",
]
