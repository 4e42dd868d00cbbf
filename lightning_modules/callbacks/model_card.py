"""The model card (README.md) of an exported folder: YAML metadata (library, pipeline, languages, dataset, BLEU as a
model-index entry) and the prose (direction, configuration table, results, training, command, usage)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def looks_like_hub_dataset(name: str | None) -> bool:
    return bool(name) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None and not Path(name).exists()


def config_table(model: Any) -> str:
    config = model.config
    rows = [
        ("vocabulary (shared, tied)" if getattr(config, "tie_word_embeddings", False) else "vocabulary",
         getattr(config, "vocab_size", None)),
        ("d_model", getattr(config, "d_model", None)),
        ("encoder / decoder layers",
         f"{getattr(config, 'encoder_layers', '?')} / {getattr(config, 'decoder_layers', '?')}"),
        ("attention heads", getattr(config, "encoder_attention_heads", None)),
        ("d_ff", getattr(config, "encoder_ffn_dim", None)),
        ("dropout", getattr(config, "dropout", None)),
        ("positions", getattr(config, "position_embedding_type", None)),
        ("layer norm", "pre-LN" if getattr(config, "normalize_before", False) else "post-LN (the paper's)"),
        ("parameters", f"{model.num_parameters():,}"),
    ]
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows if value is not None]
    return "\n".join(lines)


def model_kind(model: Any) -> tuple[str, str]:
    """(pipeline task, Auto class) of a model: a decoder-only model (VaswaniForCausalLM) is a text generator, loaded
    with AutoModelForCausalLM; the captioning model reads pixel_values and loads with AutoModelForImageTextToText."""
    if getattr(model, "main_input_name", None) == "pixel_values":
        return "image-to-text", "AutoModelForImageTextToText"
    if getattr(model.config, "is_encoder_decoder", True):
        return "translation", "AutoModelForSeq2SeqLM"
    return "text-generation", "AutoModelForCausalLM"


def card_metadata(model: Any, languages: list[str], dataset_name: str | None, bleu: float | None,
                  bleu_signature: str | None) -> ModelCardData:
    """The YAML header: library, pipeline, tags, languages, dataset, and BLEU as a model-index entry."""
    task, _ = model_kind(model)
    pair = "-".join(languages) if len(languages) == 2 else None
    dataset_label = dataset_name or "unknown"
    eval_results = None if bleu is None else [EvalResult(
        task_type=task, task_name=f"Translation {pair}" if pair else task.replace("-", " ").capitalize(),
        dataset_type=dataset_label, dataset_name=f"{dataset_label} (validation)", metric_type="bleu",
        metric_name="BLEU (sacreBLEU)", metric_value=round(float(bleu), 4), metric_config=bleu_signature,
    )]
    seq2seq = getattr(model.config, "is_encoder_decoder", True)
    return ModelCardData(
        library_name="transformers", pipeline_tag=task,
        tags=[task, "transformer", "attention-is-all-you-need", "seq2seq" if seq2seq else "causal-lm", "vaswani"],
        language=languages or None, datasets=[dataset_name] if looks_like_hub_dataset(dataset_name) else None,
        metrics=["bleu"] if bleu is not None else None,
        model_name=f"vaswani-transformer-{pair}" if pair else "vaswani-transformer", eval_results=eval_results,
    )


def results_lines(bleu: float | None, bleu_signature: str | None, global_step: int | None,
                  validation_step: int | None) -> list[str]:
    if bleu is None:
        return ["- BLEU: not measured for these weights."]
    at = f", measured at step {validation_step}" if validation_step is not None else ""
    if validation_step is not None and global_step is not None and validation_step != global_step:
        at += f" (these weights are from step {global_step})"
    lines = [f"- BLEU (sacreBLEU) on the validation set{at}: **{bleu:.2f}**"]
    return lines + ([f"- sacreBLEU signature: `{bleu_signature}`"] if bleu_signature else [])


def usage_lines(model: Any) -> list[str]:
    _, auto_class = model_kind(model)
    captioning = auto_class == "AutoModelForImageTextToText"
    return [
        "```python",
        f"from transformers import {auto_class}, AutoTokenizer" + (", AutoImageProcessor" if captioning else ""),
        "",
        "# with the hf_transformer package installed, `import hf_transformer` instead of trust_remote_code",
        f'model = {auto_class}.from_pretrained("<this folder or repo>", trust_remote_code=True)',
        'tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>")',
        *(['processor = AutoImageProcessor.from_pretrained("<this folder or repo>", trust_remote_code=True)',
           "caption_ids = model.generate(**processor(images, return_tensors=\"pt\"))"] if captioning else []),
        "```",
    ]


def build_model_card(
    model: Any,
    *,
    source_lang: str | None,
    target_lang: str | None,
    dataset_name: str | None,
    bleu: float | None,
    bleu_signature: str | None,
    global_step: int | None,
    training_seconds: float | None,
    command: str | None,
    validation_step: int | None = None,
    notes: Sequence[str] = (),
) -> str:
    """README.md text: YAML metadata (library, tags, languages, dataset, BLEU as model-index) and the prose."""
    languages = [lang for lang in (source_lang, target_lang) if lang]
    metadata = card_metadata(model, languages, dataset_name, bleu, bleu_signature)
    task, _ = model_kind(model)
    direction = f"{source_lang} → {target_lang}" if len(languages) == 2 else {
        "image-to-text": "image captioning", "translation": "translation"}.get(task, "language modelling")
    dataset_label = dataset_name or "unknown"
    duration = format_duration(training_seconds) if training_seconds is not None else "unknown"
    return "\n".join([
        "---", metadata.to_yaml().strip(), "---", "",
        f"# {metadata.model_name}", "",
        f"A Transformer (Vaswani et al., 2017, *Attention Is All You Need*) trained from scratch for {direction} "
        f"on `{dataset_label}`.", "",
        f"- Languages: {', '.join(languages) if languages else 'unknown'} (source first)",
        f"- Dataset: `{dataset_label}`", "",
        "## Model", "", config_table(model), "",
        "## Results", "", *results_lines(bleu, bleu_signature, global_step, validation_step), "",
        "## Training", "",
        f"- Global step: {global_step if global_step is not None else 'unknown'}",
        f"- Training time (wall clock since fit start): {duration}",
        f"- Exported: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        *[f"- {note}" for note in notes], "",
        "Command:", "", "```bash", command or "unknown", "```", "",
        "## Usage", "", *usage_lines(model), "",
    ])


__all__ = ["build_model_card"]
