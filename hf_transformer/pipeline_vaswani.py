"""The `vaswani-translation` pipeline task (transformers 5 removed `pipeline("translation")`) and the decoding limits
of §6.1 it shares with `translate()`.

    translator = pipeline("vaswani-translation", model=model, tokenizer=tokenizer)
    translator("Ein Hund rennt.")                     # [{"translation_text": "A dog runs."}]
    translator(["Ein Hund rennt.", "Zwei Katzen."])   # [{"translation_text": ...}, {"translation_text": ...}]

An exported folder names this file in its config (`custom_pipelines`, `add_pipeline_to_folder`) and carries it, so
`pipeline(model=folder, trust_remote_code=True)` builds this pipeline where only `transformers` is installed. The file
therefore imports nothing but torch and transformers.
"""

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, GenerationConfig, Pipeline, PreTrainedModel
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines import PIPELINE_REGISTRY

TASK = "vaswani-translation"
EXTRA_OUTPUT_TOKENS = 50  # §6.1: maximum output length = input length + 50


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


class VaswaniTranslationPipeline(Pipeline):
    """`pipeline("vaswani-translation", model=..., tokenizer=...)`: a text gives `[{"translation_text": ...}]`, a list
    of texts a list of `{"translation_text": ...}`, as transformers' own translation pipelines did."""

    def _sanitize_parameters(
        self, num_beams: int | None = None, length_penalty: float | None = None, truncation: bool | None = None
    ):
        preprocess = {"truncation": truncation} if truncation is not None else {}
        forward = {"num_beams": num_beams, "length_penalty": length_penalty}
        return preprocess, forward, {}

    def __call__(self, inputs: str | list[str], *args, **kwargs):
        if isinstance(inputs, list) and not inputs:  # the base class would index inputs[0]
            return []
        result = super().__call__(inputs, *args, **kwargs)
        if isinstance(inputs, list):  # one list per text: flatten, as transformers' text2text pipelines do
            return [item[0] for item in result]
        return result

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

    def postprocess(self, outputs: dict) -> list[dict]:
        return [{"translation_text": self.tokenizer.decode(outputs["output_ids"][0], skip_special_tokens=True)}]


def add_pipeline_to_folder(folder: str | os.PathLike) -> None:
    """Make a saved translation model folder a pipeline for `pipeline(model=folder, trust_remote_code=True)`: this
    file is copied beside the model's code and config.json names it under `custom_pipelines` (what transformers reads
    to build a pipeline from a repository's own code). The live model's config is left alone, so that
    `pipeline(TASK, model=model, tokenizer=tokenizer)` keeps working without remote code."""
    custom_object_save(VaswaniTranslationPipeline, folder)
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["custom_pipelines"] = {TASK: {"impl": f"{Path(__file__).stem}.{VaswaniTranslationPipeline.__name__}",
                                         "pt": ["AutoModelForSeq2SeqLM"], "tf": [], "type": "text"}}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# `pt_model` by its Auto class: a saved folder names it, and transformers looks it up by name where it loads the folder
PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=VaswaniTranslationPipeline, pt_model=AutoModelForSeq2SeqLM)
