"""Translating text: a `translate()` helper and a pipeline task, since transformers 5 removed
`pipeline("translation")`.

    from hf_transformer import translate
    translate(["Ein Hund rennt."], model, tokenizer)              # paper decoding: beam 4, alpha 0.6
    translate(["Ein Hund rennt."], "ct2_model", None, backend="ctranslate2", compute_type="int8")  # CTranslate2

    from transformers import pipeline
    translator = pipeline("vaswani-translation", model=model, tokenizer=tokenizer)
    translator("Ein Hund rennt.")                                 # [{"translation_text": "A dog runs."}]

Both decode as in §6.1: the model's generation config (beam 4, length penalty 0.6) and outputs of at most
input length + 50 tokens.
"""

import os
from typing import Any

import torch
from transformers import GenerationConfig, Pipeline, PreTrainedModel, PreTrainedTokenizerBase
from transformers.pipelines import PIPELINE_REGISTRY

from .modeling_vaswani import VaswaniForConditionalGeneration

TASK = "vaswani-translation"
EXTRA_OUTPUT_TOKENS = 50  # §6.1: maximum output length = input length + 50
BACKENDS = ("pytorch", "ctranslate2")


def paper_generation_config(
    model: PreTrainedModel, source_length: int, num_beams: int | None, length_penalty: float | None
) -> GenerationConfig:
    """The model's generation config with max_length = source length + 50 (+1 for the decoder start token),
    capped by the positional table."""
    if num_beams is not None and (isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1):
        raise ValueError(f"`num_beams` must be a positive integer (1 is greedy, the paper uses 4), got {num_beams!r}.")
    if length_penalty is not None and (isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float))
                                       or length_penalty != length_penalty):
        raise ValueError(f"`length_penalty` must be a number (the paper's alpha is 0.6), got {length_penalty!r}.")
    config = GenerationConfig.from_dict(model.generation_config.to_dict())
    config.max_new_tokens = None
    config.max_length = min(source_length + EXTRA_OUTPUT_TOKENS + 1, model.config.max_position_embeddings)
    if num_beams is not None:
        config.num_beams = num_beams
    if length_penalty is not None:
        config.length_penalty = length_penalty
    if config.num_beams == 1:  # greedy: the beam-only settings would only trigger warnings
        config.length_penalty, config.early_stopping = 1.0, False
    return config


def check_texts(texts: list[object]) -> None:
    """Raise a TypeError for a non-str item, a ValueError for a str that is not valid Unicode (a lone surrogate,
    e.g. from bytes decoded with errors="surrogateescape"): the tokenizer would reject it without saying which."""
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"texts[{index}] is not valid Unicode: character {error.start} is the lone surrogate "
                f"{text[error.start]!r}. Decode the input bytes with errors='replace' (or fix its encoding)."
            ) from None


def check_token_ids(encoded: list[list[int]], vocab_size: int) -> None:
    """A tokenizer with a larger vocabulary than the model's embedding would crash inside the embedding lookup."""
    for index, ids in enumerate(encoded):
        if ids and max(ids) >= vocab_size:
            raise ValueError(
                f"Input {index} has token id {max(ids)} but the model's `vocab_size` is {vocab_size}: the tokenizer "
                "does not belong to this model. Load the tokenizer saved with the model."
            )


def check_source_lengths(lengths: list[int], max_length: int, truncation: bool) -> None:
    if truncation:
        return
    for index, length in enumerate(lengths):
        if length > max_length:
            raise ValueError(
                f"Input {index} has {length} tokens but the model reads at most {max_length} "
                "(`max_position_embeddings`). Pass `truncation=True` to cut it, or split the text into sentences."
            )


@torch.no_grad()
def translate(
    texts: str | list[str],
    model: PreTrainedModel | str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase | None,
    batch_size: int = 32,
    num_beams: int | None = None,
    length_penalty: float | None = None,
    truncation: bool = False,
    backend: str = "pytorch",
    compute_type: str = "default",
) -> str | list[str]:
    """Translate one text or a list of texts; returns the same shape.

    Texts are grouped into batches of equal token length (no padding), translated with the model's generation
    config (§6.1 by default: beam 4, alpha 0.6, at most input length + 50 tokens) and returned in the input order.
    Empty or blank texts translate to "" without running the model. `truncation=False` makes inputs longer than
    the model's positions an error instead of a silent cut.

    backend: "pytorch" (`model.generate()`) or "ctranslate2": the same batches, limits and beam search run by
    CTranslate2 (`pip install hf-transformer[ctranslate2]`), token for token the same in float32. `model` is then our
    model (converted on the fly, each call), a folder written by `hf-transformer-ctranslate2` (`tokenizer` may be
    None: the folder's is used) or a loaded `hf_transformer.ctranslate2.CTranslate2Model`. compute_type: the
    CTranslate2 compute type ("default" keeps the stored weight type; "int8", "float32", "int8_float16", ...).
    """
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    check_texts(texts)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {list(BACKENDS)}, got {backend!r}.")
    if backend == "pytorch" and compute_type != "default":
        raise ValueError(f"`compute_type`={compute_type!r} is a CTranslate2 setting: pass backend='ctranslate2'.")
    if not texts:
        return []
    if backend == "ctranslate2":
        from .ctranslate2 import ctranslate2_options, load_ctranslate2  # imports ctranslate2 only when used

        engine, tokenizer = load_ctranslate2(model, tokenizer, compute_type)
        ctranslate2_options(paper_generation_config(engine, 1, num_beams, length_penalty))  # refuse before any work
        return translate_with(texts, single, engine, tokenizer, batch_size, num_beams, length_penalty, truncation)
    if tokenizer is None:
        raise ValueError("Pass the model's `tokenizer`.")
    model_was_training = model.training
    model.eval()
    try:
        return translate_with(texts, single, model, tokenizer, batch_size, num_beams, length_penalty, truncation)
    finally:
        model.train(model_was_training)


def translate_with(
    texts: list[str],
    single: bool,
    model: PreTrainedModel | Any,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    num_beams: int | None,
    length_penalty: float | None,
    truncation: bool,
) -> str | list[str]:
    """translate() once the backend is chosen: `model` is our model or a `CTranslate2Model` (both have `.config`,
    `.generation_config` and a `generate`)."""
    max_source = model.config.max_position_embeddings
    encoded = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    check_token_ids(encoded, model.config.vocab_size)
    check_source_lengths([len(ids) for ids in encoded], max_source, truncation)
    paper_generation_config(model, 1, num_beams, length_penalty)  # bad settings fail before any work

    # Batches hold sources of one token length: no padding, and every sentence gets exactly its own §6.1 limit.
    by_length: dict[int, list[int]] = {}
    for index, text in enumerate(texts):
        if text.strip():
            by_length.setdefault(min(len(encoded[index]), max_source), []).append(index)
    results = [""] * len(texts)
    for length, indices in sorted(by_length.items()):
        config = paper_generation_config(model, length, num_beams, length_penalty)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            sources = [encoded[i][:max_source] for i in chunk]
            if isinstance(model, PreTrainedModel):
                input_ids = torch.tensor(sources, device=model.device)  # (b, length)
                output = model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
                )
            else:
                output = model.generate(sources, config)  # CTranslate2: lists of ids in and out
            for i, translation in zip(chunk, tokenizer.batch_decode(output, skip_special_tokens=True)):
                results[i] = translation
    return results[0] if single else results


class VaswaniTranslationPipeline(Pipeline):
    """`pipeline("vaswani-translation", model=..., tokenizer=...)`: text in, {"translation_text": ...} out."""

    def _sanitize_parameters(
        self, num_beams: int | None = None, length_penalty: float | None = None, truncation: bool | None = None
    ):
        preprocess = {"truncation": truncation} if truncation is not None else {}
        forward = {"num_beams": num_beams, "length_penalty": length_penalty}
        return preprocess, forward, {}

    def __call__(self, inputs: str | list[str], *args, **kwargs):
        if isinstance(inputs, list) and not inputs:  # the base class would index inputs[0]
            return []
        return super().__call__(inputs, *args, **kwargs)

    def preprocess(self, text: str, truncation: bool = False) -> dict:
        if not isinstance(text, str):
            raise TypeError(f"{TASK} translates strings, got {type(text).__name__}.")
        check_texts([text])
        encoded = self.tokenizer(text, return_tensors="pt", truncation=False)
        check_token_ids(encoded["input_ids"].tolist(), self.model.config.vocab_size)
        max_source = self.model.config.max_position_embeddings
        check_source_lengths([encoded["input_ids"].shape[1]], max_source, truncation)
        encoded = {name: tensor[:, :max_source] for name, tensor in encoded.items()}
        encoded["is_blank"] = not text.strip()
        return encoded

    def _forward(self, inputs: dict, num_beams: int | None = None, length_penalty: float | None = None) -> dict:
        """One text (batch_size=1, the default) or a padded batch of them (`batch_size=n`): each row is generated
        unpadded with its own §6.1 length limit, so a batch gives what one-by-one calls give. Returns (b, T) ids;
        a blank text gets a row of padding, which decodes to ""."""
        blank = inputs["is_blank"] if isinstance(inputs["is_blank"], list) else [inputs["is_blank"]]
        pad_id = self.model.config.pad_token_id
        rows = []
        for input_ids, attention_mask, is_blank in zip(inputs["input_ids"], inputs["attention_mask"], blank):
            if is_blank:
                rows.append(torch.full((1,), pad_id, dtype=torch.long, device=input_ids.device))
                continue
            input_ids = input_ids[attention_mask.bool()][None]  # (1, S_i): the row without its padding
            config = paper_generation_config(self.model, input_ids.shape[1], num_beams, length_penalty)
            output = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                         generation_config=config)
            rows.append(output[0])
        return {"output_ids": torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id)}

    def postprocess(self, outputs: dict) -> dict:
        return {"translation_text": self.tokenizer.decode(outputs["output_ids"][0], skip_special_tokens=True)}


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=VaswaniTranslationPipeline, pt_model=VaswaniForConditionalGeneration
)
