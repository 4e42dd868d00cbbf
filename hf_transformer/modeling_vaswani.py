"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017) as a Hugging Face model.

Read top to bottom in the paper's order (§3.2, attention, with its kernels, masks and variants, is its own file:
attention_vaswani.py):
    §3.5          sinusoidal (or learned) positions
    §3.3 / §3.1   position-wise feed-forward network, encoder and decoder layers (post-LN or pre-LN)
    §3.1          the two stacks, each with its token embedding scaled by sqrt(d_model) (§3.4)
    §3.4          the shared embedding, the tied output projection and the loss
then the two models built from the same parts: image captioning and the decoder-only language model.
This file imports only torch and transformers (and its sibling files): it is copied next to the weights for
`trust_remote_code`, and the same copy must run on every transformers 5.x release the package supports.

Notation in shape comments: B batch, S source length, T target length, P cached (past) length,
D = d_model, H heads, Dh = D / H, V vocabulary.
"""

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Unpack

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
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .attention_vaswani import (
    VaswaniAttention,
    VaswaniRelativePositionEmbedding,
    causal_mask,
    has_padding,
    padding_mask,
)
from .configuration_vaswani import VaswaniConfig
from .generation_vaswani import DECODING_LOOPS, lean_decode, lean_decoding_problem

logger = logging.get_logger(__name__)

# transformers 5.24 renamed the cache argument and output field `past_key_values` -> `cache`: its generate() passes
# `cache=` and reads `outputs.cache`; earlier 5.x releases pass and read `past_key_values`. Every forward below takes
# both names, and every output carries the cache under the field the installed release declares, so the same file
# runs on either side of the rename without a deprecation warning.
CACHE_FIELD = "cache" if "cache" in {field.name for field in dataclasses.fields(Seq2SeqLMOutput)} else "past_key_values"


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing: the decoder reads <s> y_1 ... y_{T-1} and predicts y_1 ... y_T (§3.1, "shifted right")."""
    decoder_input_ids = labels.new_full(labels.shape, pad_token_id)
    decoder_input_ids[:, 1:] = labels[:, :-1]
    decoder_input_ids[:, 0] = decoder_start_token_id
    return decoder_input_ids.masked_fill(decoder_input_ids == -100, pad_token_id)


# ----------------------------------------------------------------------------------------------------------------
# §3.5 Positional encoding
# ----------------------------------------------------------------------------------------------------------------


def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(pos / 10000^(2i/D)), interleaved as in §3.5.

    positions: integer tensor of any shape (...). Returns (..., D) in float32, computed in float64 (float32 where
    the device has no float64) so that a position gets the same vector however many others are computed with it."""
    dtype = torch.float32 if positions.device.type == "mps" else torch.float64
    two_i = torch.arange(0, dim, 2, dtype=dtype, device=positions.device)  # (ceil(D/2),)
    angle = positions.to(dtype).unsqueeze(-1) / torch.pow(10000.0, two_i / dim)  # (..., ceil(D/2))
    table = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(-2)  # (..., 2 ceil(D/2)): sin, cos, ...
    return table[..., :dim].float()  # (..., D)


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The rows PE(0) ... PE(num_positions - 1): (num_positions, D)."""
    return sinusoids(torch.arange(num_positions), dim)


class VaswaniSinusoidalPositionalEmbedding(nn.Module):
    """The fixed sinusoids of §3.5, computed for the positions asked: no table is stored, saved or allocated, so
    neither a long `max_position_embeddings` nor `from_pretrained` (which leaves non-persistent buffers
    uninitialised) costs or risks anything."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.embedding_dim = embedding_dim

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return sinusoids(position_ids, self.embedding_dim)  # (..., D)


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
# §3.3 Position-wise feed-forward network and §3.1 the layers
# ----------------------------------------------------------------------------------------------------------------
# Each sublayer is wrapped as LayerNorm(x + Dropout(Sublayer(x))) (post-LN, §3.1 and §5.4), or, with
# `normalize_before`, as x + Dropout(Sublayer(LayerNorm(x))) (pre-LN; the stack then ends with a LayerNorm).


class VaswaniLayer(GradientCheckpointingLayer):
    """What both layer kinds share: the position-wise FFN of §3.3 and the residual wiring of each sublayer."""

    def __init__(self, config: VaswaniConfig, ffn_dim: int):
        super().__init__()
        self.normalize_before = config.normalize_before
        self.fc1 = nn.Linear(config.d_model, ffn_dim)  # §3.3 position-wise FFN
        self.fc2 = nn.Linear(ffn_dim, config.d_model)
        self.activation_fn = ACT2FN[config.activation_function]
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """FFN(x) = max(0, x W1 + b1) W2 + b2, applied to each position separately and identically."""
        return self.fc2(self.activation_dropout(self.activation_fn(self.fc1(hidden_states))))  # (B, L, D)

    def sublayer(self, hidden_states: torch.Tensor, layer_norm: nn.LayerNorm, function: Callable) -> torch.Tensor:
        """LayerNorm(x + Dropout(function(x))) for post-LN, x + Dropout(function(LayerNorm(x))) for pre-LN."""
        if self.normalize_before:
            return hidden_states + self.dropout(function(layer_norm(hidden_states)))
        return layer_norm(hidden_states + self.dropout(function(hidden_states)))


class VaswaniEncoderLayer(VaswaniLayer):
    """Self-attention, then the FFN (§3.1, Figure 1 left)."""

    def __init__(self, config: VaswaniConfig, layer_idx: int):
        super().__init__(config, config.encoder_ffn_dim)
        self.self_attn = VaswaniAttention(config, config.encoder_attention_heads, layer_idx=layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool = False
    ) -> torch.Tensor:
        def self_attention(states: torch.Tensor) -> torch.Tensor:
            return self.self_attn(states, attention_mask, output_attentions=output_attentions)[0]

        hidden_states = self.sublayer(hidden_states, self.self_attn_layer_norm, self_attention)
        return self.sublayer(hidden_states, self.final_layer_norm, self.feed_forward)  # (B, S, D)


class VaswaniDecoderLayer(VaswaniLayer):
    """Masked self-attention, encoder-decoder attention, then the FFN (§3.1, Figure 1 right). A decoder-only
    config (`is_encoder_decoder=False`, [`VaswaniForCausalLM`]) has no encoder-decoder attention."""

    def __init__(self, config: VaswaniConfig, layer_idx: int):
        super().__init__(config, config.decoder_ffn_dim)
        heads = config.decoder_attention_heads
        self.self_attn = VaswaniAttention(config, heads, layer_idx=layer_idx, is_causal=True)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        if config.is_encoder_decoder:
            self.encoder_attn = VaswaniAttention(config, heads, layer_idx=layer_idx, is_cross_attention=True)
            self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)
        else:
            self.encoder_attn, self.encoder_attn_layer_norm = None, None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> torch.Tensor:
        def self_attention(states: torch.Tensor) -> torch.Tensor:
            return self.self_attn(states, attention_mask, cache=cache, output_attentions=output_attentions)[0]

        def cross_attention(states: torch.Tensor) -> torch.Tensor:
            return self.encoder_attn(
                states, encoder_attention_mask, key_value_states=encoder_hidden_states, cache=cache,
                output_attentions=output_attentions,
            )[0]

        hidden_states = self.sublayer(hidden_states, self.self_attn_layer_norm, self_attention)
        if self.encoder_attn is not None:
            hidden_states = self.sublayer(hidden_states, self.encoder_attn_layer_norm, cross_attention)
        return self.sublayer(hidden_states, self.final_layer_norm, self.feed_forward)  # (B, T, D)


# ----------------------------------------------------------------------------------------------------------------
# The pretrained-model contract: initialisation, tying, generation
# ----------------------------------------------------------------------------------------------------------------


class VaswaniPreTrainedModel(PreTrainedModel):
    config_class = VaswaniConfig
    config: VaswaniConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False  # the float masks and the attention variants need an additive bias
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
                f"The weights of {str(pretrained_model_name_or_path)!r} are truncated or corrupt: its "
                f"model.safetensors (or a shard named in model.safetensors.index.json) cannot be read ({error}). "
                "Export or download the model again (from_pretrained(..., force_download=True) for a Hub copy)."
            ) from error

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """fairseq's initialisation (the paper does not give one): Xavier-uniform projections, zero biases,
        N(0, D^-0.5) embeddings (their scale matches the sqrt(D) multiplier of §3.4), unit LayerNorms."""
        if isinstance(module, (nn.Linear, nn.Conv2d)):  # Conv2d: the image encoder's patch projection
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
        elif isinstance(module, VaswaniRelativePositionEmbedding):  # N(0, Dh^-0.5), as tensor2tensor's E_r
            init.normal_(module.weight, mean=0.0, std=module.weight.shape[-1] ** -0.5)

    def resolve_cache(self, cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
        """The cache a forward received, under either name (see CACHE_FIELD). Where the installed release has
        renamed it, the old name is deprecated and says so, as in the library's own models; before, it is the name
        generate() passes and stays silent."""
        if past_key_values is None:
            return cache
        if cache is not None:
            raise ValueError("Pass the cache once: as `cache` (or, before transformers 5.24, `past_key_values`).")
        if CACHE_FIELD == "cache":
            warnings.warn("`past_key_values` is deprecated since transformers 5.24: pass the cache as `cache`.",
                          FutureWarning, stacklevel=3)
        return past_key_values

    def output_flags(self, output_attentions: bool | None, output_hidden_states: bool | None) -> tuple[bool, bool]:
        """What to record: the values passed, else the config's (as the library's output recorder reads them)."""
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return bool(output_attentions), output_hidden_states

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        """The encoder and decoder always share one embedding matrix (§3.4); `tie_word_embeddings` only decides
        whether the output projection is tied to it too. (The library's default drops every tie when
        `tie_word_embeddings` is False.)"""
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


class VaswaniGenerationMixin(GenerationMixin):
    """`generate()` for the three generating heads: the library's, kept inside the positional table, and with a
    beam-search cache reorder that skips the encoder keys/values."""

    def generate(self, inputs: torch.Tensor | None = None, generation_config: GenerationConfig | None = None,
                 decoding_loop: str = "auto", **kwargs):
        """`GenerationMixin.generate` (its `**kwargs` are its own: generation settings and model inputs). With
        absolute positions (§3.5) the decoder cannot read past `max_position_embeddings`, so a longer `max_length`
        or `max_new_tokens` is capped there, with a warning, instead of failing in the middle of decoding.

        decoding_loop: "auto" decodes plain beam or greedy search of the encoder-decoder models with the lean loop
        of generation_vaswani.py (the same tokens, faster) and everything else with the library's loop; "lean"
        insists on the lean loop (a ValueError says why a request is not plain); "library" always takes the
        library's loop."""
        if decoding_loop not in DECODING_LOOPS:
            raise ValueError(f"`decoding_loop` must be one of {list(DECODING_LOOPS)}, got {decoding_loop!r}.")
        if self.config.position_embedding_type != "relative":
            settings = generation_config if generation_config is not None else self.generation_config
            limit = self.config.max_position_embeddings
            if self.config.is_encoder_decoder:
                start = kwargs["decoder_input_ids"].shape[1] if kwargs.get("decoder_input_ids") is not None else 1
            else:
                prompt = inputs if inputs is not None else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
                start = prompt.shape[1] if prompt is not None else 1
            max_new_tokens = kwargs.get("max_new_tokens", settings.max_new_tokens)
            max_length = kwargs.get("max_length") or settings.max_length or 0
            if max_new_tokens is not None and start + max_new_tokens > limit:
                if start >= limit:
                    raise ValueError(
                        f"The prompt already holds {start} positions, all of `max_position_embeddings`={limit}: "
                        "shorten it, or use a model with a larger `max_position_embeddings`."
                    )
                logger.warning(f"`max_new_tokens`={max_new_tokens} after {start} tokens would pass the model's "
                               f"`max_position_embeddings`={limit}: generating at most {limit - start} tokens.")
                kwargs["max_new_tokens"] = limit - start
            elif max_new_tokens is None and max_length > limit:
                logger.warning(f"`max_length`={max_length} passes the model's `max_position_embeddings`={limit}: "
                               f"generating at most {limit} positions.")
                kwargs["max_length"] = limit
        if decoding_loop != "library":
            problem = lean_decoding_problem(self, generation_config, kwargs)
            if problem is None:
                kwargs["custom_generate"] = lean_decode
            elif decoding_loop == "lean":
                raise ValueError(f"decoding_loop='lean' decodes plain beam or greedy search only; this call asks for "
                                 f"{problem}. Use decoding_loop='auto' (or 'library').")
        return super().generate(inputs, generation_config, **kwargs)

    def _reorder_cache(self, cache: Cache | None, beam_idx: torch.Tensor) -> Cache | None:
        """Beam search hook of `generate()` (it calls `_reorder_cache` when a model defines one): move the decoder
        self-attention cache to the surviving beams. The encoder keys/values are left alone: a beam never leaves its
        sentence and all beams of a sentence hold the same encoder output, so reordering them would copy identical
        rows; skipping it halves the per-step copy that dominates beam decoding on CPU (benchmarks/decode.py)."""
        if isinstance(cache, EncoderDecoderCache):
            cache.self_attention_cache.reorder_cache(beam_idx)
        elif cache is not None:
            cache.reorder_cache(beam_idx)
        return cache


# ----------------------------------------------------------------------------------------------------------------
# §3.1 The encoder and decoder stacks
# ----------------------------------------------------------------------------------------------------------------


class VaswaniStack(VaswaniPreTrainedModel):
    """What the encoder and decoder share: the token embedding, its sqrt(D) scale and the positions of §3.4 /
    §3.5, dropout, and for pre-LN a final LayerNorm. Each stack owns its embedding matrix; in the translation model
    both are tied to the one shared matrix (§3.4) through `_tied_weights_keys`."""

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.embed_tokens = (  # the image encoder reads patches instead of tokens
            nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
            if self.main_input_name == "input_ids" else None
        )
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        if config.position_embedding_type == "sinusoidal":
            self.embed_positions = VaswaniSinusoidalPositionalEmbedding(config.d_model)
        elif config.position_embedding_type == "learned":  # Table 3, row E
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.d_model)
        else:  # "relative": positions enter every self-attention instead (VaswaniRelativePositionEmbedding)
            self.embed_positions = None
        self.dropout = nn.Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(config.d_model) if config.normalize_before else None
        self.gradient_checkpointing = False

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def embed(
        self, inputs_embeds: torch.Tensor, past_length: int, position_ids: torch.Tensor | None, side: str
    ) -> torch.Tensor:
        """Dropout(x * sqrt(D) + PE(positions)) for token embeddings x (B, L, D), §3.4, §3.5, §5.4. Positions are
        P..P+L-1 unless `position_ids` (B, L) say otherwise (left-padded batches). Returns (B, L, D). With
        relative positions nothing is added and the length is unbounded."""
        if self.embed_positions is None:
            return self.dropout(inputs_embeds * self.embed_scale)
        length = inputs_embeds.shape[1]
        if position_ids is None:
            check_positions(past_length + length, self.config, side)
            position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device)  # (L,)
        elif not torch.compiler.is_compiling():
            check_positions(int(position_ids.max()) + 1, self.config, side)
        positions = self.embed_positions(position_ids).to(inputs_embeds.dtype)  # (L, D) or (B, L, D)
        return self.dropout(inputs_embeds * self.embed_scale + positions)

    def tokens_or_embeddings(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
                             side: str) -> torch.Tensor:
        """The (B, L, D) token embeddings of exactly one of `input_ids` / `inputs_embeds` (unscaled)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(f"Pass exactly one of the {side} `input_ids` and `inputs_embeds`.")
        return self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds


class VaswaniEncoder(VaswaniStack):
    """N identical layers over the source; pads are masked in every self-attention."""

    _can_record_outputs = {"hidden_states": VaswaniEncoderLayer, "attentions": VaswaniAttention}

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.layers = nn.ModuleList([VaswaniEncoderLayer(config, i) for i in range(config.encoder_layers)])
        self.post_init()

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutput:
        """input_ids: (B, S) source tokens; attention_mask: (B, S), 1 = token, 0 = padding. Returns (B, S, D); the
        library's output recorder adds `hidden_states` / `attentions` when asked."""
        if input_ids is not None:
            check_source_ids(input_ids, self.config.vocab_size, check_values=not self.training)
        inputs_embeds = self.tokens_or_embeddings(input_ids, inputs_embeds, "source")
        return self.encode(inputs_embeds, attention_mask, output_attentions)

    def encode(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool | None
    ) -> BaseModelOutput:
        """Positions, then the N layers (+ the final LayerNorm of pre-LN) over (B, S, D) input vectors."""
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        hidden_states = self.embed(inputs_embeds, 0, None, "source")  # (B, S, D)
        mask = padding_mask(attention_mask, hidden_states.dtype)  # (B, 1, 1, S) or None
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, output_attentions=output_attentions)
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states)


class VaswaniDecoder(VaswaniStack):
    """N identical layers over the shifted target, attending to the encoder output; causal self-attention.
    With a decoder-only config (`is_encoder_decoder=False`) it is the whole model of [`VaswaniForCausalLM`]: no
    encoder output, and a DynamicCache instead of an EncoderDecoderCache."""

    _can_record_outputs = {
        "hidden_states": VaswaniDecoderLayer,
        "attentions": OutputRecorder(VaswaniAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(VaswaniAttention, index=1, layer_name="encoder_attn"),
    }

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.layers = nn.ModuleList([VaswaniDecoderLayer(config, i) for i in range(config.decoder_layers)])
        self.post_init()

    def new_cache(self) -> Cache:
        encoder_decoder = self.config.is_encoder_decoder
        if encoder_decoder:
            return EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        return DynamicCache(config=self.config)

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """input_ids: (B, T) tokens following the P cached ones; attention_mask: (B, P + T), 1 = token; position_ids:
        (B, T) absolute positions (left-padded batches), default P..P+T-1; cache (`past_key_values` before
        transformers 5.24): the KV cache, created here when `use_cache` and none is given. Returns (B, T, D)."""
        cache = self.resolve_cache(cache, past_key_values)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        encoder_decoder = self.config.is_encoder_decoder
        if encoder_decoder and encoder_hidden_states is None:
            raise ValueError("The decoder attends to the encoder output: pass `encoder_hidden_states` (B, S, D).")
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False  # recomputing a layer would append to the cache twice
        if not use_cache:
            cache = None
        elif cache is None:
            cache = self.new_cache()
        expected_cache = EncoderDecoderCache if encoder_decoder else Cache
        if cache is not None and not isinstance(cache, expected_cache):
            raise TypeError(
                f"The cache must be an {expected_cache.__name__}, got {type(cache).__name__}; the tuple format was "
                "removed in transformers 5."
            )
        past_length = cache.get_seq_length() if cache is not None else 0

        inputs_embeds = self.tokens_or_embeddings(input_ids, inputs_embeds, "target")
        hidden_states = self.embed(inputs_embeds, past_length, position_ids, "target")  # (B, T, D)
        self_mask = self.self_attention_mask(attention_mask, past_length, hidden_states)
        cross_mask = padding_mask(encoder_attention_mask, hidden_states.dtype)  # (B, 1, 1, S) or None
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, self_mask, encoder_hidden_states, cross_mask, cache=cache,
                output_attentions=output_attentions,
            )
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states, **{CACHE_FIELD: cache})

    def self_attention_mask(
        self, attention_mask: torch.Tensor | None, past_length: int, hidden_states: torch.Tensor
    ) -> torch.Tensor | None:
        """Without padding, a fresh sequence needs no mask (the kernels' own causal flag) and a single new token may
        see the whole cache; every other case gets an explicit (B, 1, T, P + T) mask. Local attention cuts its
        windows from the key padding alone: (B, 1, 1, P + T) or None."""
        query_length, dtype = hidden_states.shape[1], hidden_states.dtype
        if self.config.attention_type in ("local", "local_2d"):
            return padding_mask(attention_mask, dtype)
        if not has_padding(attention_mask) and (past_length == 0 or query_length == 1):
            return None
        return causal_mask(query_length, past_length, attention_mask, dtype, hidden_states.device)


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


def seq2seq_outputs(
    encoder_outputs: BaseModelOutput, decoder_outputs: BaseModelOutputWithPastAndCrossAttentions
) -> dict:
    """The fields every encoder-decoder output shares, the cache under the installed release's name."""
    return {
        CACHE_FIELD: getattr(decoder_outputs, CACHE_FIELD),
        "decoder_hidden_states": decoder_outputs.hidden_states,
        "decoder_attentions": decoder_outputs.attentions,
        "cross_attentions": decoder_outputs.cross_attentions,
        "encoder_last_hidden_state": encoder_outputs.last_hidden_state,
        "encoder_hidden_states": encoder_outputs.hidden_states,
        "encoder_attentions": encoder_outputs.attentions,
    }


class VaswaniModel(VaswaniPreTrainedModel):
    """Encoder-decoder without the output projection; returns the decoder's last hidden states."""

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.encoder = VaswaniEncoder(config)
        self.decoder = VaswaniDecoder(config)
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

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,
    ) -> Seq2SeqModelOutput:
        """input_ids: (B, S) source; decoder_input_ids: (B, T) shifted target; cache (`past_key_values` before
        transformers 5.24). Returns the decoder states (B, T, D)."""
        output_attentions, output_hidden_states = self.output_flags(output_attentions, output_hidden_states)
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
            cache=self.resolve_cache(cache, past_key_values),
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state, **seq2seq_outputs(encoder_outputs, decoder_outputs)
        )


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, T, V) logits against (B, T) labels, -100 ignored (label smoothing is the trainer's)."""
    return nn.functional.cross_entropy(
        logits.float().view(-1, logits.shape[-1]), labels.to(logits.device).view(-1), ignore_index=-100
    )


class VaswaniForConditionalGeneration(VaswaniPreTrainedModel, VaswaniGenerationMixin):
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

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,
    ) -> Seq2SeqLMOutput:
        """labels: (B, T) target ids ending with </s>, -100 where no loss is taken; shifted right into the decoder
        inputs when `decoder_input_ids` is not given. Returns logits (B, T, V) and the mean token cross-entropy."""
        output_attentions, output_hidden_states = self.output_flags(output_attentions, output_hidden_states)
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=self.resolve_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)  # (B, T, V)
        return Seq2SeqLMOutput(
            loss=token_cross_entropy(logits, labels) if labels is not None else None,
            logits=logits,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )

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
        super().__init__(config)
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

    @capture_outputs
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutput:
        """pixel_values: (B, C, H, W) normalised images. Returns the encoder states (B, N, D), N = (H / P) * (W / P)."""
        self.check_pixel_values(pixel_values)
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, D, H/P, W/P)
        patches = patches.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major order
        return self.encode(patches, None, output_attentions)  # positions 0..N-1 (§3.5), nothing padded


class VaswaniForImageCaptioning(VaswaniPreTrainedModel, VaswaniGenerationMixin):
    """Image in, caption out: `VaswaniImageEncoder` + the translation model's decoder, with its own token embedding
    tied to the output projection (§3.4). `generate(pixel_values=...)` decodes from `<s>` until `</s>`."""

    main_input_name = "pixel_values"
    input_modalities = ["image", "text"]
    _tied_weights_keys = {"lm_head.weight": "decoder.embed_tokens.weight"}

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.encoder = VaswaniImageEncoder(config)
        self.decoder = VaswaniDecoder(config)
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

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,
    ) -> Seq2SeqLMOutput:
        """pixel_values: (B, C, H, W); labels: (B, T) caption ids ending with </s>, -100 where no loss is taken
        (shifted right into the decoder inputs when `decoder_input_ids` is not given). Returns logits (B, T, V)."""
        output_attentions, output_hidden_states = self.output_flags(output_attentions, output_hidden_states)
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
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
            cache=self.resolve_cache(cache, past_key_values),
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(decoder_outputs.last_hidden_state)  # (B, T, V)
        return Seq2SeqLMOutput(
            loss=token_cross_entropy(logits, labels) if labels is not None else None,
            logits=logits,
            **seq2seq_outputs(encoder_outputs, decoder_outputs),
        )

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)


# ----------------------------------------------------------------------------------------------------------------
# The decoder alone: a causal language model (the Music Transformer's decoder-only setting, Huang et al. 2018)
# ----------------------------------------------------------------------------------------------------------------


class VaswaniForCausalLM(VaswaniPreTrainedModel, VaswaniGenerationMixin):
    """The decoder stack without encoder and cross-attention, its own token embedding tied to the output
    projection (§3.4), and `generate()` with a DynamicCache. Continuing a prefix (Music Transformer style) is
    `generate(input_ids=prefix)`. Built from a decoder-only config, or from the family's encoder-decoder config,
    whose decoder settings it takes (as `MarianForCausalLM` does); the attention variants of the config (relative
    positions, local blocks) apply to its self-attention."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: VaswaniConfig):
        super().__init__(config.decoder_only() if config.is_encoder_decoder else config)
        self.model = VaswaniDecoder(self.config)  # owns the embedding: model.embed_tokens
        self.lm_head = nn.Linear(self.config.d_model, self.config.vocab_size, bias=False)
        self.post_init()
        self.generation_config = GenerationConfig(
            max_length=min(256, self.config.max_position_embeddings),
            bos_token_id=self.config.bos_token_id,
            eos_token_id=self.config.eos_token_id,
            pad_token_id=self.config.pad_token_id,
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

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        """input_ids: (B, T) tokens following the P cached ones; attention_mask: (B, P + T), 1 = token, 0 = padding;
        position_ids: (B, T) absolute positions (left padding), default P..P+T-1. labels: (B, T), usually the input
        ids themselves, -100 where no loss is taken: position t is scored on predicting labels[:, t + 1] (the shift
        happens in the library's causal-LM loss); shift_labels: labels already shifted (sequence/context-parallel
        training). logits_to_keep: compute the output layer for the last n positions only (0 = all), or for the
        positions a 1-D index tensor names. `kwargs` go to the loss (`num_items_in_batch`). Returns logits and the
        mean next-token cross-entropy."""
        output_attentions, output_hidden_states = self.output_flags(output_attentions, output_hidden_states)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=self.resolve_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            use_cache=use_cache if labels is None and shift_labels is None else False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state  # (B, T, D)
        if isinstance(logits_to_keep, int):
            hidden_states = hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)  # (B, T', V)
        loss = None
        if labels is not None or shift_labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, shift_labels=shift_labels, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


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
