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


# ----------------------------------------------------------------------------------------------------------------
# §3.2 Attention: masks, the eager kernel, multi-head attention
# ----------------------------------------------------------------------------------------------------------------
# Masks are additive float tensors broadcastable to (B, H, T_q, T_k): 0 where a query may look, the dtype's most
# negative value where it may not (the paper's -inf, §3.2.3, without NaN on fully masked rows). `None` means
# "no mask", which keeps SDPA's flash / memory-efficient kernels eligible; decoder self-attention then passes
# `is_causal=True` instead of a materialised triangle.


def padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, S) with 1 = token, 0 = padding -> additive (B, 1, 1, S), or None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
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


class VaswaniAttention(nn.Module):
    """Multi-head attention, §3.2.2: H heads of size Dh = D / H, projected by W^Q, W^K, W^V, concatenated, W^O.

    The three uses (§3.2.3) differ only in their inputs and masks: encoder self-attention, causal decoder
    self-attention (with a KV cache at inference), and encoder-decoder attention whose keys/values come from the
    encoder output and are computed once per generation. The kernel comes from the library's attention
    interface under the name the config carries (`attn_implementation="eager"` or `"sdpa"`, switchable with
    `model.set_attn_implementation`); both take the same additive mask and give the same result.
    """

    def __init__(self, config: VaswaniConfig, num_heads: int, is_cross_attention: bool, layer_idx: int | None):
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

    def split_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        key_value_states: torch.Tensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        is_causal: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states: (B, T, D) queries; key_value_states: (B, S, D) encoder output for cross-attention."""
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
                key, value = past_key_values.self_attention_cache.update(key, value, self.layer_idx)

        # `_attn_implementation` is the config attribute the attention interface is keyed by (there is no public one)
        implementation = self.config._attn_implementation or "eager"
        if output_attentions:  # only the eager kernel materialises the weights
            implementation = "eager"
        attention_fn: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention_fn(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=is_causal,
        )
        output = output.reshape(batch, length, self.num_heads * self.head_dim)  # concat heads: (B, T, D)
        return self.out_proj(output), (weights if output_attentions else None)


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
    """Masked self-attention, encoder-decoder attention, then the FFN (§3.1, Figure 1 right)."""

    def __init__(self, config: VaswaniConfig, layer_idx: int):
        super().__init__()
        self.normalize_before = config.normalize_before
        self.self_attn = VaswaniAttention(config, config.decoder_attention_heads, False, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.encoder_attn = VaswaniAttention(config, config.decoder_attention_heads, True, layer_idx)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)
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
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        past_key_values: EncoderDecoderCache | None = None,
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
        elif isinstance(module, VaswaniSinusoidalPositionalEmbedding):
            # Non-persistent buffer: rebuilt after `from_pretrained` instead of being left uninitialised.
            init.copy_(module.weight, sinusoidal_table(module.num_positions, module.embedding_dim))

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        """The encoder and decoder always share one embedding matrix (§3.4); `tie_word_embeddings` only decides
        whether the output projection is tied to it too."""
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        tied = dict(self._tied_weights_keys or {})
        if not self.config.tie_word_embeddings:
            tied.pop("lm_head.weight", None)
        return tied


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
        else:  # "learned": Table 3, row E
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.d_model)
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
        """Dropout(Embedding(x) * sqrt(D) + PE(positions)), §3.4, §3.5, §5.4. Returns (B, L, D)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(f"Pass exactly one of the {side} `input_ids` and `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # (B, L, D)
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
    """N identical layers over the shifted target, attending to the encoder output; causal self-attention."""

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
        if encoder_hidden_states is None:
            raise ValueError("The decoder attends to the encoder output: pass `encoder_hidden_states` (B, S, D).")
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False  # recomputing a layer would append to the cache twice
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        if not use_cache:
            past_key_values = None
        if past_key_values is not None and not isinstance(past_key_values, EncoderDecoderCache):
            raise TypeError(
                f"`past_key_values` must be an EncoderDecoderCache, got {type(past_key_values).__name__}; "
                "the tuple format was removed in transformers 5."
            )
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0

        hidden_states = self.embed(input_ids, inputs_embeds, past_length=past_length, side="target")  # (B, T, D)
        query_length = hidden_states.shape[1]
        dtype, device = hidden_states.dtype, hidden_states.device

        # Self-attention mask. Without padding, a fresh sequence uses `is_causal` (no materialised triangle) and a
        # single new token may see the whole cache; every other case gets an explicit (B, 1, T, P + T) mask.
        decoder_padding = attention_mask is not None and not bool(attention_mask.all())
        if not decoder_padding and (past_length == 0 or query_length == 1):
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
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )
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


__all__ = [
    "VaswaniPreTrainedModel",
    "VaswaniModel",
    "VaswaniForConditionalGeneration",
    "VaswaniEncoder",
    "VaswaniDecoder",
    "shift_tokens_right",
    "sinusoidal_table",
]
