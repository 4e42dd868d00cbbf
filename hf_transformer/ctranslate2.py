"""An exact export of a translation model to CTranslate2, and decoding with it.

    hf-transformer-ctranslate2 runs/multi30k/hf_model ct2_model --quantization int8

    from hf_transformer.ctranslate2 import convert_to_ctranslate2, CTranslate2Model
    convert_to_ctranslate2("runs/multi30k/hf_model", "ct2_model")            # float32
    translate(texts, "ct2_model", None, backend="ctranslate2", compute_type="int8")

The CTranslate2 `TransformerSpec` is filled from our weights, read by their state-dict names: the shared embedding
scaled by sqrt(D) (§3.4), our own interleaved sinusoid table (§3.5; CTranslate2's built-in one is the sin|cos halves)
or the learned table, post-LN or pre-LN (with the final LayerNorm of each stack), fused q/k/v projections, the tied or
untied output layer, and relative positions when the table is shared by the heads (CTranslate2 adds q_i . a_clip(j-i),
scaled like the logits, from one table per layer, as Shaw et al.). Everything it cannot express is refused with the
config field that asks for it.

The folder holds CTranslate2's `model.bin`, `config.json` and `shared_vocabulary.json` (our token strings, one per id),
our tokenizer files, `generation_config.json` and `hf_transformer_ctranslate2.json` (the decoding settings of §6.1),
so that it translates on a machine with only `ctranslate2` and `tokenizers` (see the README).

Decoding maps HF `generate()` onto `Translator.translate_batch` so that float32 outputs are the same token for token:
- HF beam search keeps the top 2 x beams candidates, moves those among the first `beams` that end in </s> to the
  finished pool with the score sum(log p) / length ** alpha (length counting </s>, not the start token), and with
  `early_stopping=True` stops once `beams` hypotheses are finished. CTranslate2 does the same with `patience=1`,
  `return_end_token=True` (so that its length counts </s> too) and any non-zero length penalty.
- With a length penalty of exactly 0, CTranslate2 switches to another stopping rule (stop when the best beam ends);
  1e-9 gives the same scores (length ** 1e-9 is 1.0 in float32 for any length) with the HF rule.
- `max_decoding_length` counts generated tokens; HF `max_length` counts the decoder start token as well.
- `min_decoding_length=0`: CTranslate2 forbids </s> as the first token by default, HF (`min_length=0`) does not.
- `max_input_length=0`: no silent truncation of the source (translate() checks the length itself).

Imports `ctranslate2` only inside the functions that use it: the package is an optional extra
(`pip install hf-transformer[ctranslate2]`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig, PreTrainedModel
from transformers import PreTrainedTokenizerBase

from .configuration_vaswani import VaswaniConfig
from .modeling_vaswani import sinusoidal_table

QUANTIZATIONS = ("float32", "int8", "int8_float32", "int16", "float16", "bfloat16", "int8_float16", "int8_bfloat16")
SETTINGS_FILE = "hf_transformer_ctranslate2.json"
VOCABULARY_FILE = "shared_vocabulary.json"
# Our activation names (ACT2FN) -> CTranslate2's Activation enum names. "gelu" is the exact (erf) GELU,
# "gelu_new" the tanh approximation, "silu" and "swish" are the same function.
ACTIVATIONS = {"relu": "RELU", "gelu": "GELU", "gelu_new": "GELUTanh", "silu": "SWISH", "swish": "SWISH",
               "tanh": "Tanh"}
LAYER_NORM_EPSILON = 1e-5  # every LayerNorm of the model is torch.nn.LayerNorm with its default eps
# A length penalty of exactly 0 selects CTranslate2's "stop when the top beam ends" rule; this one divides every score
# by length ** 1e-9 == 1.0f (float32 rounding) and keeps the "stop after `beams` finished hypotheses" rule of HF.
ZERO_LENGTH_PENALTY = 1e-9
# Generation settings HF would apply and our CTranslate2 decoding does not, with the value(s) that leave decoding
# unchanged (None is "unset", which generate() reads as that value): any other value is refused.
NEUTRAL_GENERATION_SETTINGS = {
    "do_sample": False, "num_beam_groups": 1, "diversity_penalty": 0.0, "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": [], "force_words_ids": [], "constraints": [], "min_length": 0, "min_new_tokens": 0,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "suppress_tokens": [], "begin_suppress_tokens": [],
    "sequence_bias": {}, "exponential_decay_length_penalty": None, "renormalize_logits": False,
    "guidance_scale": 1.0, "watermarking_config": None, "stop_strings": [], "max_time": None,
    "num_return_sequences": 1,
}


# ----------------------------------------------------------------------------------------------------------------
# What CTranslate2's Transformer can express
# ----------------------------------------------------------------------------------------------------------------


def check_convertible(config: VaswaniConfig) -> None:
    """Raise a ValueError naming the config field (and its value) that CTranslate2's Transformer cannot express."""
    if getattr(config, "model_type", None) != VaswaniConfig.model_type:
        raise ValueError(
            f"`model_type` is {getattr(config, 'model_type', None)!r}: this converter reads models of type "
            f"{VaswaniConfig.model_type!r} (VaswaniForConditionalGeneration); for other models use CTranslate2's own "
            "converters (ct2-transformers-converter)."
        )
    refusals = [
        (not config.is_encoder_decoder, "is_encoder_decoder", config.is_encoder_decoder,
         "a decoder-only VaswaniForCausalLM is not a translation model; export the encoder-decoder model"),
        (config.image_size is not None or config.patch_size is not None, "image_size",
         config.image_size, "an image captioning model (patch encoder) has no CTranslate2 Transformer equivalent"),
        (config.attention_type != "full", "attention_type", config.attention_type,
         "CTranslate2's Transformer has no local block attention (Image Transformer); only 'full' converts"),
        (config.activation_function not in ACTIVATIONS, "activation_function", config.activation_function,
         f"CTranslate2 has an equivalent of {sorted(ACTIVATIONS)} only"),
        (config.position_embedding_type == "relative" and config.relative_attention_per_head
         and max(config.encoder_attention_heads, config.decoder_attention_heads) > 1,
         "relative_attention_per_head", config.relative_attention_per_head,
         "CTranslate2's relative positions (Shaw et al.) use one table shared by all heads of a layer; train "
         "with relative_attention_per_head=False to export"),
        (config.eos_token_id is None or not isinstance(config.eos_token_id, int), "eos_token_id",
         config.eos_token_id, "decoding needs exactly one end token"),
    ]
    for refused, field, value, why in refusals:
        if refused:
            raise ValueError(f"Cannot convert to CTranslate2: `{field}`={value!r}: {why}.")


# ----------------------------------------------------------------------------------------------------------------
# The specification, from the state dict
# ----------------------------------------------------------------------------------------------------------------


def weight(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """A CPU copy of one weight: CTranslate2's quantization works in place on the arrays it is given."""
    if name not in state:
        raise KeyError(f"The model has no weight {name!r}: not a VaswaniForConditionalGeneration state dict?")
    return state[name].detach().to("cpu", copy=True).contiguous()


def set_linear(spec: Any, state: dict[str, torch.Tensor], *prefixes: str) -> None:
    """One CTranslate2 linear layer from one or several (fused along the outputs: q, k, v) of our nn.Linear."""
    spec.weight = torch.cat([weight(state, f"{prefix}.weight") for prefix in prefixes])  # (sum of outputs, inputs)
    spec.bias = torch.cat([weight(state, f"{prefix}.bias") for prefix in prefixes])


def set_layer_norm(spec: Any, state: dict[str, torch.Tensor], prefix: str) -> None:
    spec.gamma = weight(state, f"{prefix}.weight")
    spec.beta = weight(state, f"{prefix}.bias")


def set_attention(spec: Any, state: dict[str, torch.Tensor], prefix: str, norm: str, self_attention: bool) -> None:
    """Self-attention: linear[0] = fused q/k/v, linear[1] = out. Cross-attention: linear[0] = q, linear[1] = fused
    k/v (over the encoder output), linear[2] = out. The LayerNorm is the one wrapping this sublayer."""
    if self_attention:
        set_linear(spec.linear[0], state, f"{prefix}.q_proj", f"{prefix}.k_proj", f"{prefix}.v_proj")
    else:
        set_linear(spec.linear[0], state, f"{prefix}.q_proj")
        set_linear(spec.linear[1], state, f"{prefix}.k_proj", f"{prefix}.v_proj")
    set_linear(spec.linear[-1], state, f"{prefix}.out_proj")
    set_layer_norm(spec.layer_norm, state, norm)
    if hasattr(spec, "relative_position_keys"):
        table = weight(state, f"{prefix}.relative_position_embedding.weight")  # (1, 2K + 1, Dh): shared by the heads
        spec.relative_position_keys = table[0]  # (2K + 1, Dh), row K + d for the distance d = j - i
        # We have relative keys only (q_i . e_(j-i) in the logits), no relative values: CTranslate2 reads the values
        # table only if it exists.
        del spec.relative_position_values


def set_stack_embeddings(spec: Any, state: dict[str, torch.Tensor], config: VaswaniConfig, side: str) -> None:
    """The shared token embedding (§3.4), its sqrt(D) scale, and the absolute positions (§3.5 or learned)."""
    embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    embeddings.weight = weight(state, "model.shared.weight")  # (V, D), one matrix for both sides
    spec.scale_embeddings = config.scale_embedding  # True: multiply by sqrt(D)
    if config.position_embedding_type == "sinusoidal":  # ours interleaves sin/cos: write the table explicitly
        spec.position_encodings.encodings = sinusoidal_table(config.max_position_embeddings, config.d_model)
    elif config.position_embedding_type == "learned":
        spec.position_encodings.encodings = weight(state, f"model.{side}.embed_positions.weight")  # (L, D)


def set_feed_forward(spec: Any, state: dict[str, torch.Tensor], prefix: str) -> None:
    """FFN(x) = act(x W1 + b1) W2 + b2 (§3.3), wrapped by the layer's final LayerNorm."""
    set_linear(spec.linear_0, state, f"{prefix}.fc1")
    set_linear(spec.linear_1, state, f"{prefix}.fc2")
    set_layer_norm(spec.layer_norm, state, f"{prefix}.final_layer_norm")


def build_spec(
    model: PreTrainedModel, tokens: list[str], unk_token: str, generation_config: GenerationConfig
) -> Any:
    """The `ctranslate2.specs.TransformerSpec` of `model` (a VaswaniForConditionalGeneration), vocabulary included."""
    from ctranslate2.specs import common_spec, transformer_spec

    config = model.config
    check_convertible(config)
    state = model.state_dict()
    activation = getattr(common_spec.Activation, ACTIVATIONS[config.activation_function])
    relative = config.position_embedding_type == "relative"
    pre_norm = config.normalize_before
    encoder = transformer_spec.TransformerEncoderSpec(
        config.encoder_layers, config.encoder_attention_heads, pre_norm=pre_norm, activation=activation,
        relative_position=relative,
    )
    decoder = transformer_spec.TransformerDecoderSpec(
        config.decoder_layers, config.decoder_attention_heads, pre_norm=pre_norm, activation=activation,
        relative_position=relative,
    )
    set_stack_embeddings(encoder, state, config, "encoder")
    set_stack_embeddings(decoder, state, config, "decoder")
    for index, layer in enumerate(encoder.layer):
        prefix = f"model.encoder.layers.{index}"
        set_attention(layer.self_attention, state, f"{prefix}.self_attn", f"{prefix}.self_attn_layer_norm", True)
        set_feed_forward(layer.ffn, state, prefix)
    for index, layer in enumerate(decoder.layer):
        prefix = f"model.decoder.layers.{index}"
        set_attention(layer.self_attention, state, f"{prefix}.self_attn", f"{prefix}.self_attn_layer_norm", True)
        set_attention(layer.attention, state, f"{prefix}.encoder_attn", f"{prefix}.encoder_attn_layer_norm", False)
        set_feed_forward(layer.ffn, state, prefix)
    if pre_norm:  # pre-LN: each stack ends with a LayerNorm
        set_layer_norm(encoder.layer_norm, state, "model.encoder.layer_norm")
        set_layer_norm(decoder.layer_norm, state, "model.decoder.layer_norm")
    decoder.projection.weight = weight(state, "lm_head.weight")  # (V, D): tied or not, it is in the state dict

    spec = transformer_spec.TransformerSpec(encoder, decoder)
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON
    spec.config.unk_token = unk_token
    spec.config.eos_token = tokens[generation_config.eos_token_id]  # where decoding stops (HF: eos_token_id)
    spec.config.decoder_start_token = tokens[generation_config.decoder_start_token_id]  # what it starts from (<s>)
    spec.config.bos_token = spec.config.decoder_start_token  # read only with add_source_bos
    spec.config.add_source_bos = False  # the source tokens come from our tokenizer, </s> included
    spec.config.add_source_eos = False
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    return spec


def vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> list[str]:
    """The token string of every id 0..vocab_size-1. Rows of the embedding beyond the tokenizer's vocabulary (a model
    built with a rounded-up `vocab_size`) get placeholder strings, so that ids map one to one."""
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's `vocab_size` is {vocab_size}: the tokenizer "
            "does not belong to this model. Pass the tokenizer saved with the model."
        )
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    tokens += [f"<unused_{index}>" for index in range(len(tokenizer), vocab_size)]
    if len(set(tokens)) != len(tokens):
        duplicates = sorted({token for token in tokens if tokens.count(token) > 1})[:5]
        raise ValueError(f"The tokenizer maps several ids to the same token string ({duplicates}): CTranslate2 "
                         "identifies tokens by their string.")
    return tokens


# ----------------------------------------------------------------------------------------------------------------
# Conversion: function and command
# ----------------------------------------------------------------------------------------------------------------


def load_translation_model(source: str | os.PathLike) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved folder or Hub id -> (model, tokenizer), refusing an unconvertible config before loading weights."""
    config = AutoConfig.from_pretrained(str(source))
    check_convertible(config)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(source)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    return model, tokenizer


def one_token_generation_config(model: PreTrainedModel) -> GenerationConfig:
    """A copy of the model's generation config with one end token and one decoder start token (CTranslate2 takes
    one of each), filled in from the model config where the generation config leaves them unset."""
    generation_config = GenerationConfig.from_dict(model.generation_config.to_dict())  # a copy: filled in below
    for name in ("eos_token_id", "decoder_start_token_id"):
        value = getattr(generation_config, name, None)
        if value is None:
            setattr(generation_config, name, getattr(model.config, name))
        elif not isinstance(value, int):
            raise ValueError(f"Cannot convert to CTranslate2: generation_config.{name}={value!r}: one id is needed.")

    return generation_config


def convert_to_ctranslate2(
    model: str | os.PathLike | PreTrainedModel,
    output_dir: str | os.PathLike,
    quantization: str = "float32",
    tokenizer: PreTrainedTokenizerBase | None = None,
    force: bool = False,
) -> Path:
    """Write a CTranslate2 model folder for `model` (a VaswaniForConditionalGeneration, a folder saved with
    `save_pretrained`, or a Hub id) and return its path.

    quantization: the stored weight type, one of `QUANTIZATIONS`; a float32 folder can still be loaded with any
        `compute_type` (CTranslate2 converts on load). tokenizer: required when `model` is a model object; read from
        the folder otherwise. force: replace an existing `output_dir`.
    The folder is written next to `output_dir` and renamed into place, so a failed conversion leaves nothing behind.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {list(QUANTIZATIONS)}, got {quantization!r}.")
    output = Path(output_dir)
    if output.exists() and not force:
        raise FileExistsError(f"{str(output)!r} already exists: pass force=True (--force) to replace it.")
    if isinstance(model, PreTrainedModel):
        if tokenizer is None:
            raise ValueError("Pass the model's `tokenizer` (its token strings become CTranslate2's vocabulary).")
        check_convertible(model.config)
    else:
        model, loaded_tokenizer = load_translation_model(model)
        tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    generation_config = one_token_generation_config(model)
    tokens = vocabulary(tokenizer, model.config.vocab_size)
    unk_token = tokenizer.unk_token if tokenizer.unk_token in tokens else tokens[0]
    spec = build_spec(model, tokens, unk_token, generation_config)
    spec.validate()
    spec.optimize(quantization=quantization)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        spec.save(str(staging))
        tokenizer.save_pretrained(str(staging))
        generation_config.save_pretrained(str(staging))
        settings = {
            "format": 1,
            "max_position_embeddings": model.config.max_position_embeddings,
            "vocab_size": model.config.vocab_size,
            "position_embedding_type": model.config.position_embedding_type,
            "quantization": quantization,
            "source": str(getattr(model, "name_or_path", "") or ""),
        }
        (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def main(argv: list[str] | None = None) -> None:
    """`hf-transformer-ctranslate2 MODEL OUTPUT [--quantization ...] [--force]`."""
    parser = argparse.ArgumentParser(
        prog="hf-transformer-ctranslate2",
        description="Convert a translation model (a save_pretrained folder or a Hub id) to a CTranslate2 model folder.",
    )
    parser.add_argument("model", help="folder written by save_pretrained (model + tokenizer), or a Hub model id")
    parser.add_argument("output", help="the CTranslate2 folder to write")
    parser.add_argument("--quantization", default="float32", choices=QUANTIZATIONS,
                        help="weight type stored in the folder (default: float32)")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    args = parser.parse_args(argv)
    try:
        output = convert_to_ctranslate2(args.model, args.output, quantization=args.quantization, force=args.force)
    except (ValueError, FileExistsError, OSError) as error:
        parser.exit(2, f"hf-transformer-ctranslate2: error: {error}\n")
    print(f"wrote {output} ({args.quantization})")


# ----------------------------------------------------------------------------------------------------------------
# Decoding with a converted folder
# ----------------------------------------------------------------------------------------------------------------


def ctranslate2_options(generation_config: GenerationConfig) -> dict[str, Any]:
    """`Translator.translate_batch` keyword arguments that decode as HF `generate()` with `generation_config` (whose
    `max_length` is set, as translate() does), or a ValueError naming a setting CTranslate2 would not apply alike."""
    for name, neutral in NEUTRAL_GENERATION_SETTINGS.items():
        value = getattr(generation_config, name, None)
        if value is not None and value != neutral:
            raise ValueError(
                f"generation_config.{name}={value!r} has no exact CTranslate2 equivalent here: the ctranslate2 "
                f"backend decodes with plain beam search or greedy search; set it to {neutral!r} (or None), or use "
                "backend='pytorch'."
            )
    beams = generation_config.num_beams or 1
    length_penalty = 1.0 if generation_config.length_penalty is None else float(generation_config.length_penalty)
    if beams > 1 and generation_config.early_stopping is not True:
        raise ValueError(
            f"generation_config.early_stopping={generation_config.early_stopping!r}: CTranslate2's beam search stops "
            "when `num_beams` hypotheses are finished, which is HF's early_stopping=True (the paper's setting); set "
            "it, or use backend='pytorch'."
        )
    return dict(
        beam_size=beams,
        patience=1,
        num_hypotheses=1,
        length_penalty=(length_penalty or ZERO_LENGTH_PENALTY) if beams > 1 else 1.0,
        max_decoding_length=generation_config.max_length - 1,  # HF counts the decoder start token
        min_decoding_length=0,
        return_end_token=True,
        max_input_length=0,
        max_batch_size=0,
    )


# ----------------------------------------------------------------------------------------------------------------
# Loading on a CPU
# ----------------------------------------------------------------------------------------------------------------

def int8_saturates() -> bool:
    """Whether CTranslate2's int8 matrix products saturate in this process: on an x86-64 CPU that is not Intel's
    (CTranslate2 computes with Intel MKL on Intel CPUs and with oneDNN on the others) and lacks the VNNI dot-product
    instructions (AVX512-VNNI, AVX-VNNI), unless CT2_USE_MKL asks for MKL. oneDNN's int8 product then adds pairs of
    u8 x s8 products in 16-bit lanes (vpmaddubsw), which saturate. The CPU is read from torch's cpuinfo; False where
    torch cannot tell."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)  # absent from older torch releases
    if get_capabilities is None or os.environ.get("CT2_USE_MKL", "").lower() in ("1", "true", "on", "yes"):
        return False
    capabilities = get_capabilities()
    return (capabilities.get("architecture") == "x86_64"
            and not (capabilities.get("avx512_vnni") or capabilities.get("avx_vnni"))
            and "intel" not in str(capabilities.get("cpu_name", "")).lower())


class CTranslate2Model:
    """A converted folder, loaded: `ctranslate2.Translator` + vocabulary + the model's decoding settings. Quacks like
    our model for translate(): `.config.max_position_embeddings`, `.config.vocab_size`, `.generation_config`."""

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        compute_type: str = "default",
        inter_threads: int = 1,
        intra_threads: int = 0,
    ):
        import ctranslate2

        self.path = Path(path)
        settings_path = self.path / SETTINGS_FILE
        if not settings_path.is_file():
            raise FileNotFoundError(
                f"{str(self.path)!r} is not a folder written by convert_to_ctranslate2 / hf-transformer-ctranslate2 "
                f"(no {SETTINGS_FILE}). Convert the model first: hf-transformer-ctranslate2 MODEL {self.path}."
            )
        settings = json.loads(settings_path.read_text())
        self.config = argparse.Namespace(
            max_position_embeddings=settings["max_position_embeddings"], vocab_size=settings["vocab_size"]
        )
        self.generation_config = GenerationConfig.from_pretrained(str(self.path))
        self.tokens: list[str] = json.loads((self.path / VOCABULARY_FILE).read_text(encoding="utf-8"))
        self.token_ids = {token: index for index, token in enumerate(self.tokens)}
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        supported = ctranslate2.get_supported_compute_types(device)
        if compute_type not in ("default", "auto") and compute_type not in supported:
            raise ValueError(
                f"`compute_type`={compute_type!r} is not supported on {device!r} by this CTranslate2 build; "
                f"supported: {sorted(supported)} (or 'default', 'auto')."
            )
        # "default" computes in the stored type, "auto" in int8 on a CPU
        computes = {"default": settings.get("quantization", "float32"), "auto": "int8"}.get(compute_type, compute_type)
        if device == "cpu" and computes.startswith("int8") and int8_saturates():
            warnings.warn(
                f"CTranslate2 computes int8 (`compute_type`={compute_type!r}) with oneDNN on this CPU (x86, not Intel, "
                "without VNNI), whose int8 products saturate: most outputs change (README, \"Serving with "
                "CTranslate2\"). Use compute_type='float32' here: exact, and faster than int8 with Intel MKL "
                "(CT2_USE_MKL=1), which keeps the outputs but is slow on this CPU.", stacklevel=2)
        self.translator = ctranslate2.Translator(
            str(self.path), device=device, compute_type=compute_type, inter_threads=inter_threads,
            intra_threads=intra_threads,
        )

    def generate(self, input_ids: list[list[int]], generation_config: GenerationConfig) -> list[list[int]]:
        """Token ids in, token ids out as HF generate() returns them: decoder start token, tokens, </s> (when the
        hypothesis ended before `max_length`)."""
        options = ctranslate2_options(generation_config)
        results = self.translator.translate_batch([[self.tokens[i] for i in ids] for ids in input_ids], **options)
        start = generation_config.decoder_start_token_id
        return [[start] + [self.token_ids[token] for token in result.hypotheses[0]] for result in results]


def load_ctranslate2(
    model: str | os.PathLike | PreTrainedModel | CTranslate2Model,
    tokenizer: PreTrainedTokenizerBase | None,
    compute_type: str,
) -> tuple[CTranslate2Model, PreTrainedTokenizerBase]:
    """What translate(backend="ctranslate2") decodes with: a loaded folder as is, a folder path loaded (its tokenizer
    too when `tokenizer` is None), or our model object converted to float32 in a temporary folder and loaded on its
    device with `compute_type`."""
    if isinstance(model, CTranslate2Model):
        engine = model
    elif isinstance(model, PreTrainedModel):
        if tokenizer is None:
            raise ValueError("Pass the model's `tokenizer`.")
        device = "cuda" if model.device.type == "cuda" else "cpu"
        with tempfile.TemporaryDirectory(prefix="hf_transformer_ct2_") as folder:
            path = convert_to_ctranslate2(model, Path(folder) / "model", tokenizer=tokenizer)
            engine = CTranslate2Model(path, device=device, compute_type=compute_type,
                                      intra_threads=torch.get_num_threads())
    elif isinstance(model, (str, os.PathLike)):
        engine = CTranslate2Model(model, device="auto", compute_type=compute_type)
    else:
        raise TypeError(
            "With backend='ctranslate2', `model` is a VaswaniForConditionalGeneration, a folder written by "
            f"hf-transformer-ctranslate2, or a CTranslate2Model; got {type(model).__name__}."
        )
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(str(engine.path))
    return engine, tokenizer


if __name__ == "__main__":
    main()
