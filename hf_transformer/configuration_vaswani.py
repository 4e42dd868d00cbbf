"""Configuration of the Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

Field names follow Marian/BART in `transformers` so that tooling written for them (the cache builder,
`generate()`, the Auto classes) reads ours unchanged. Defaults are the paper's base model (Table 3).
This file imports only `transformers`: it is copied next to the weights for `trust_remote_code`.
"""

import copy

from transformers import GenerationConfig, PreTrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Keys that `PreTrainedConfig.__post_init__` consumes although they are not fields (model_type and auto_map come
# from every config.json); any other key left over is a field this version does not know (see __post_init__).
BASE_CONFIG_KEYS = frozenset({
    "auto_map", "model_type", "name_or_path", "_name_or_path", "torch_dtype", "num_labels", "output_attentions",
    "attn_implementation", "experts_implementation", "per_layer_config", "_commit_hash", "rope_scaling", "rope_theta",
    "rope_parameters", "_attn_implementation_internal", "_experts_implementation_internal",
    "custom_pipelines",  # read by pipeline(): an exported folder names its translation pipeline there
})

POSITION_EMBEDDING_TYPES = ("sinusoidal", "learned", "relative")
# The most positions a config may ask for (2^20). Sinusoids are computed for the positions used and cost nothing up
# front, but a learned table is max_position_embeddings x d_model parameters, and no attention here spans a million
# tokens: a larger value is a typo (or a hostile config.json) that must fail by name, not in the allocator.
MAX_POSITION_EMBEDDINGS = 1 << 20
ATTENTION_TYPES = ("full", "local", "local_2d")
ACTIVATION_FUNCTIONS = ("relu", "gelu", "gelu_new", "silu", "swish", "tanh")

# Written into every saved config so that the folder loads with `trust_remote_code=True` on a machine where
# this package is not installed (save_pretrained copies the two files named here next to the weights).
AUTO_MAP = {
    "AutoConfig": "configuration_vaswani.VaswaniConfig",
    "AutoModel": "modeling_vaswani.VaswaniModel",
    "AutoModelForSeq2SeqLM": "modeling_vaswani.VaswaniForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_vaswani.VaswaniForCausalLM",
    "AutoModelForImageTextToText": "modeling_vaswani.VaswaniForImageCaptioning",
}


class VaswaniConfig(PreTrainedConfig):
    r"""Configuration of [`VaswaniModel`] and [`VaswaniForConditionalGeneration`].

    Args:
        vocab_size: size of the shared source/target vocabulary (§3.4: one BPE vocabulary, one embedding matrix).
        d_model: width of every sublayer output, D in the paper (base 512, big 1024).
        encoder_layers / decoder_layers: N, the number of identical layers of each stack (6).
        encoder_attention_heads / decoder_attention_heads: h, heads per multi-head attention (8 base, 16 big).
        encoder_ffn_dim / decoder_ffn_dim: d_ff, inner size of the position-wise feed-forward network (4 * D).
        dropout: P_drop on every sublayer output and on embeddings + positions (§5.4; 0.1 base, 0.3 big).
        attention_dropout: dropout on the attention probabilities (not in the paper; tensor2tensor uses it).
        activation_dropout: dropout after the FFN activation (not in the paper).
        activation_function: FFN non-linearity; the paper's is "relu" (§3.3).
        max_position_embeddings: longest sequence (source or target) the absolute positions cover, at most 2^20;
            sinusoids are computed for the positions used, "learned" keeps a table of this many rows. `generate()`
            stops there.
        scale_embedding: multiply token embeddings by sqrt(d_model) (§3.4).
        position_embedding_type: "sinusoidal" (§3.5), "learned" (Table 3, row E) or "relative": no absolute
            positions; every self-attention adds q_i . e_clip(j - i) to its logits (Shaw et al. 2018, computed
            with the Music Transformer's skewing, Huang et al. 2018). Cross-attention stays content-only.
        max_relative_position: with "relative", distances are clipped to [-max_relative_position,
            max_relative_position]: 2 * max_relative_position + 1 learned vectors of size Dh per attention layer.
        relative_attention_per_head: with "relative", one table per head (True) or one shared by all heads.
        attention_type: "full" self-attention over the whole sequence (§3.2), "local" 1D block attention
            (Image Transformer, Parmar et al. 2018): queries in blocks of `local_block_length`, each block sees
            itself and the `local_memory_length` positions before it (causal inside, in the decoder). In the
            encoder a block sees `local_memory_length` positions on each side. Cost is linear in the length.
            Or "local_2d", the Image Transformer's 2D local attention (§3.2 there): the sequence is laid out on a
            grid of `local_grid_width` positions per row (an image in raster order: width x channels), queries go
            in blocks of `local_block_rows` x `local_block_columns` grid cells, and each block sees the rectangle
            from `local_memory_rows` rows above it to its own last row and from `local_memory_columns` columns
            left of it to as many right of it (in the encoder also `local_memory_rows` rows below it); in the
            decoder only the positions before the query in raster order. Position p sits at row
            p // local_grid_width, column p % local_grid_width (after a start token, position p holds pixel
            p - 1 and predicts pixel p). Cost is linear in the length. Does not combine with relative positions.
            Cross-attention is always full.
        local_block_length / local_memory_length: query block length l_q and memory length l_m of "local".
        local_grid_width: positions per grid row of "local_2d" (required with it): image width x channels.
        local_block_rows / local_block_columns: the query block of "local_2d", in grid rows and columns.
        local_memory_rows / local_memory_columns: the memory around a query block of "local_2d": rows above it,
            columns on each side of it.
        normalize_before: False is the paper's post-LN, LayerNorm(x + Sublayer(x)); True is pre-LN,
            x + Sublayer(LayerNorm(x)), with a final LayerNorm after each stack.
        tie_word_embeddings: tie the output projection to the shared embedding (three-way tying, §3.4).
        init_std: standard deviation of the embedding init; None means d_model ** -0.5 (fairseq's choice).
        is_encoder_decoder: True for the translation model; False for the decoder-only [`VaswaniForCausalLM`]
            (its `encoder_*` sizes are then set to the `decoder_*` ones).
        image_size / patch_size / num_channels: the image encoder of [`VaswaniForImageCaptioning`] reads
            num_channels x image_size x image_size images as (image_size / patch_size)^2 patches of
            patch_size x patch_size pixels (ViT-style); None (image_size, patch_size) for the text models.
    """

    model_type = "vaswani"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the cache's name from transformers 5.24 on, and before
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

    vocab_size: int = 37000
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_function: str = "relu"
    max_position_embeddings: int = 1024
    scale_embedding: bool = True
    position_embedding_type: str = "sinusoidal"
    normalize_before: bool = False
    init_std: float | None = None
    max_relative_position: int = 64
    relative_attention_per_head: bool = True
    attention_type: str = "full"
    local_block_length: int = 64
    local_memory_length: int = 64
    local_grid_width: int | None = None
    local_block_rows: int = 8
    local_block_columns: int = 32
    local_memory_rows: int = 8
    local_memory_columns: int = 16
    image_size: int | None = None
    patch_size: int | None = None
    num_channels: int = 3
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 1
    tie_word_embeddings: bool = True
    is_encoder_decoder: bool = True
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        unknown = set(kwargs) - BASE_CONFIG_KEYS
        if unknown:  # generation settings in a config.json are dropped by the base class: not unknown
            unknown -= set(GenerationConfig().to_dict())
        if unknown:
            logger.warning(
                f"VaswaniConfig: unknown fields {sorted(unknown)} (written by a newer version, or misspelled?) are "
                "kept as attributes, but nothing in this version reads them."
            )
        if getattr(self, "auto_map", None) is None and "auto_map" not in kwargs:
            kwargs["auto_map"] = dict(AUTO_MAP)
        super().__post_init__(**kwargs)
        if not self.is_encoder_decoder:
            self.mirror_decoder_sizes()
        self.check()

    def mirror_decoder_sizes(self) -> None:
        """Decoder-only ([`VaswaniForCausalLM`]): there is no encoder, so its sizes mirror the decoder's and tools
        that read `num_hidden_layers` / `num_attention_heads` (the KV-cache builder of `generate()`) see the
        decoder's."""
        self.encoder_layers = self.decoder_layers
        self.encoder_attention_heads = self.decoder_attention_heads
        self.encoder_ffn_dim = self.decoder_ffn_dim

    # Table 3 of the paper. Both take the vocabulary size because the paper's ~37k is corpus-specific.
    @classmethod
    def base(cls, vocab_size: int = 37000, **overrides) -> "VaswaniConfig":
        """Transformer base: N=6, D=512, d_ff=2048, h=8, P_drop=0.1 (65M parameters with 37k tokens)."""
        return cls(vocab_size=vocab_size, **overrides)

    @classmethod
    def big(cls, vocab_size: int = 37000, **overrides) -> "VaswaniConfig":
        """Transformer big: N=6, D=1024, d_ff=4096, h=16, P_drop=0.3 (213M parameters with 37k tokens)."""
        sizes = dict(
            d_model=1024,
            encoder_ffn_dim=4096,
            decoder_ffn_dim=4096,
            encoder_attention_heads=16,
            decoder_attention_heads=16,
            dropout=0.3,
        )
        return cls(vocab_size=vocab_size, **{**sizes, **overrides})

    def decoder_only(self) -> "VaswaniConfig":
        """A copy for the decoder-only [`VaswaniForCausalLM`]: the decoder's settings, `is_encoder_decoder=False`
        (as `MarianForCausalLM` takes the decoder of a Marian config). This config is left unchanged."""
        config = copy.deepcopy(self)
        config.is_encoder_decoder = False
        config.mirror_decoder_sizes()
        return config

    def check(self) -> None:
        """Raise a ValueError naming the first invalid field, its value and what is allowed."""
        for name in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                     "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
                     "num_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.max_position_embeddings > MAX_POSITION_EMBEDDINGS:
            raise ValueError(
                f"`max_position_embeddings` must be at most {MAX_POSITION_EMBEDDINGS} (2^20), got "
                f"{self.max_position_embeddings!r}. Longer sequences need no table at all: use "
                "position_embedding_type='relative' (and attention_type='local' to keep the cost linear)."
            )
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, name)
            if self.d_model % heads != 0:
                raise ValueError(
                    f"`d_model` ({self.d_model}) must be divisible by `{name}` ({heads}): each head has size "
                    f"d_model / heads (§3.2.2). Allowed head counts for d_model={self.d_model}: "
                    f"{[h for h in range(1, min(self.d_model, 64) + 1) if self.d_model % h == 0]}."
                )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be a probability in [0, 1), got {value!r}.")
        self.check_image_fields()
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"`position_embedding_type` must be one of {list(POSITION_EMBEDDING_TYPES)}, "
                f"got {self.position_embedding_type!r}."
            )
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(
                f"`attention_type` must be one of {list(ATTENTION_TYPES)}, got {self.attention_type!r}."
            )
        for name in ("max_relative_position", "local_block_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        value = self.local_memory_length
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"`local_memory_length` must be an integer >= 0, got {value!r}.")
        self.check_local_2d_fields()
        if self.activation_function not in ACTIVATION_FUNCTIONS:
            raise ValueError(
                f"`activation_function` must be one of {list(ACTIVATION_FUNCTIONS)}, got {self.activation_function!r}."
            )
        if self.init_std is not None and not (isinstance(self.init_std, (int, float)) and self.init_std > 0):
            raise ValueError(f"`init_std` must be a positive float or None (d_model ** -0.5), got {self.init_std!r}.")
        for name in ("scale_embedding", "normalize_before", "tie_word_embeddings", "is_encoder_decoder", "use_cache",
                     "relative_attention_per_head"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        self.check_token_ids()

    def check_token_ids(self) -> None:
        """The special token ids: in the vocabulary; `pad_token_id` and `decoder_start_token_id` required."""
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if name in ("pad_token_id", "decoder_start_token_id") and value is None:
                raise ValueError(f"`{name}` is required: an id in [0, {self.vocab_size - 1}].")
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 <= value < self.vocab_size):
                raise ValueError(
                    f"`{name}` must be a token id in [0, vocab_size - 1] = [0, {self.vocab_size - 1}], got {value!r}."
                )

    def check_local_2d_fields(self) -> None:
        """The grid and block shapes of "local_2d" (checked whatever the attention type, like the 1D lengths)."""
        for name, minimum in (("local_block_rows", 1), ("local_block_columns", 1), ("local_memory_rows", 0),
                              ("local_memory_columns", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                kind = "a positive integer" if minimum else "an integer >= 0"
                raise ValueError(f"`{name}` must be {kind}, got {value!r}.")
        value = self.local_grid_width
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`local_grid_width` must be a positive integer (positions per grid row) or None, got "
                             f"{value!r}.")
        if self.attention_type != "local_2d":
            return
        if value is None:
            raise ValueError(
                "`local_grid_width` is required with attention_type='local_2d': the positions per row of the grid "
                "the sequence is laid out on (an image in raster order: width x channels, e.g. 96 for 32 x 32 RGB)."
            )
        if self.position_embedding_type == "relative":
            raise ValueError(
                "`position_embedding_type`='relative' does not combine with attention_type='local_2d': use "
                "'sinusoidal' or 'learned' positions with it, or attention_type 'local' or 'full' with relative ones."
            )

    def check_image_fields(self) -> None:
        """`image_size` and `patch_size`: both None (a text model), or whole patches that fit the positions."""
        if self.image_size is None and self.patch_size is None:
            return
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be a positive integer (set both `image_size` and `patch_size` for an image "
                    f"model, neither for a text model), got {value!r}."
                )
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be divisible by `patch_size` ({self.patch_size}): the image "
                f"is cut into whole patches. Allowed patch sizes: "
                f"{[p for p in range(1, self.image_size + 1) if self.image_size % p == 0]}."
            )
        if (self.image_size // self.patch_size) ** 2 > self.max_position_embeddings:
            raise ValueError(
                f"An image of `image_size`={self.image_size} cut into patches of `patch_size`={self.patch_size} has "
                f"{(self.image_size // self.patch_size) ** 2} patches, more than `max_position_embeddings`="
                f"{self.max_position_embeddings}: raise `max_position_embeddings` or `patch_size`."
            )


__all__ = ["VaswaniConfig"]
