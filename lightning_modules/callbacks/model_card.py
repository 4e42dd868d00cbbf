"""The model card (README.md) of an exported folder, rendered from the model and the folder's run record
(`hf_transformer_run.json`, written beside it by the export): YAML metadata (library, pipeline, languages, dataset,
license, BLEU and chrF as model-index entries) and the prose: what the weights are (best, last, averaged), the
configuration, what each score was measured on (split, number of pairs, sample, decoding, sacreBLEU signature), the
test score once `test` ran, training, command and usage.

The record's `evaluations` hold one summary per evaluation (`"validation"`, `"test"`), as the task modules make them
(`TaskModule.evaluation_summary`): `step`, `metrics` (bleu, chrf, exact_match, loss, ...), `signatures`, `set`
(dataset, split, pairs, total, sample), `decoding` (num_beams, length_penalty).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

#: The names the card gives the three kinds of exported weights.
WEIGHT_KINDS = {"best": "weights of the best validation score", "last": "last weights of the run",
                "average": "average of the last checkpoints (§6.1)"}
SCORES = (("bleu", "BLEU", "BLEU (sacreBLEU)"), ("bleu_lc", "lowercased BLEU", "BLEU (sacreBLEU, lowercased)"),
          ("chrf", "chrF", "chrF (sacreBLEU)"), ("comet", "COMET", "COMET"))


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


def eval_results(task: str, pair: str | None, evaluations: dict[str, Any], dataset: str) -> list[EvalResult]:
    """One model-index entry per score and evaluated split."""
    results = []
    for role, summary in evaluations.items():
        if not summary:
            continue
        scored = summary.get("set") or {}
        split, scored_on = scored.get("split", role), scored.get("dataset") or dataset  # the split's own data
        for key, _, name in SCORES:
            value = summary.get("metrics", {}).get(key)
            if value is None:
                continue
            results.append(EvalResult(
                task_type=task, task_name=f"Translation {pair}" if pair else task.replace("-", " ").capitalize(),
                dataset_type=scored_on, dataset_name=f"{scored_on} ({role})", dataset_split=split, metric_type=key,
                metric_name=name, metric_value=round(float(value), 4),
                metric_config=(summary.get("signatures") or {}).get(key)))
    return results


def card_metadata(model: Any, record: dict[str, Any]) -> ModelCardData:
    """The YAML header: library, pipeline, tags, languages, dataset, license, and the scores as model-index."""
    task, _ = model_kind(model)
    languages = record.get("languages") or []
    pair = "-".join(languages) if len(languages) == 2 else None
    dataset = record.get("dataset")
    results = eval_results(task, pair, record.get("evaluations") or {}, dataset or "unknown")
    seq2seq = getattr(model.config, "is_encoder_decoder", True)
    return ModelCardData(
        library_name="transformers", pipeline_tag=task, license=record.get("license") or "unknown",
        tags=[task, "transformer", "attention-is-all-you-need", "seq2seq" if seq2seq else "causal-lm", "vaswani"],
        language=languages or None, datasets=[dataset] if looks_like_hub_dataset(dataset) else None,
        metrics=sorted({result.metric_type for result in results}) or None,
        model_name=f"vaswani-transformer-{pair}" if pair else "vaswani-transformer", eval_results=results or None,
    )


def weights_lines(weights: dict[str, Any]) -> list[str]:
    """What the weights of this folder are, and where the others are."""
    kind = weights.get("kind", "last")
    line = f"- These are the {WEIGHT_KINDS.get(kind, kind)}"
    if kind == "best" and weights.get("score") is not None:
        line += f" ({weights.get('monitor')} {weights['score']:.4g})"
    if weights.get("step") is not None and kind != "average":
        line += f", step {weights['step']}"
    if kind == "average":
        line += f": {weights.get('checkpoints', '?')}"
    lines = [line + "."]
    if weights.get("sibling"):
        lines.append(f"- The {WEIGHT_KINDS.get(weights.get('sibling_kind'), 'other weights')} are in "
                     f"`{weights['sibling']}` next to this folder.")
    return lines


def describe_set(summary: dict[str, Any], fallback_split: str) -> str:
    """"512 of the 1,014 pairs of split `validation` of `bentrevett/multi30k` (a fixed random sample (seed 0))"."""
    scored = summary.get("set") or {}
    split = scored.get("split", fallback_split)
    where = f"split `{split}`" + (f" of `{scored['dataset']}`" if scored.get("dataset") else "")
    pairs, total = summary.get("sentences", scored.get("pairs")), scored.get("total")
    if pairs is None:
        return where
    text = f"{pairs:,} of the {total:,} pairs of {where}" if total and pairs < total else f"{pairs:,} pairs of {where}"
    if scored.get("sample"):
        text += f" ({scored['sample']})"
    elif total and pairs < total:
        text += " (a limited validation: whole batches of the split, see the log)"
    return text


def describe_decoding(decoding: dict[str, Any] | None) -> str:
    if not decoding:
        return "decoding not recorded"
    beams = decoding.get("num_beams")
    search = "greedy decoding" if beams == 1 else f"beam search ({beams} beams, length penalty " \
                                                  f"{decoding.get('length_penalty')})"
    return f"{search}, at most input length + 50 tokens (§6.1)"


def evaluation_lines(evaluations: dict[str, Any]) -> list[str]:
    lines = []
    for role, label in (("validation", "Validation"), ("test", "Test")):
        summary = evaluations.get(role)
        if not summary:
            if role == "test":
                lines.append("- Test: not run yet; `hf-transformer test --ckpt_path <this folder>` scores the test "
                             "split and adds the result here.")
            else:
                lines.append("- Validation: not measured for these weights.")
            continue
        metrics = summary.get("metrics", {})
        scores = ", ".join(f"{name} **{metrics[key]:.2f}**" for key, name, _ in SCORES if metrics.get(key) is not None)
        at = f" at step {summary['step']}" if summary.get("step") is not None else ""
        lines.append(f"- {label}{at}: {scores or 'no score'} on {describe_set(summary, role)}; "
                     f"{describe_decoding(summary.get('decoding'))}.")
        for key, name, _ in SCORES:
            signature = (summary.get("signatures") or {}).get(key)
            if signature:
                lines.append(f"  - {name} signature: `{signature}`")
    return lines


def usage_lines(model: Any) -> list[str]:
    _, auto_class = model_kind(model)
    captioning = auto_class == "AutoModelForImageTextToText"
    translation = auto_class == "AutoModelForSeq2SeqLM"
    return [
        "```python",
        f"from transformers import {auto_class}, AutoTokenizer" + (", AutoImageProcessor" if captioning else ""),
        "",
        "# with the hf_transformer package installed, `import hf_transformer` instead of trust_remote_code",
        f'model = {auto_class}.from_pretrained("<this folder or repo>", trust_remote_code=True)',
        'tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>", trust_remote_code=True)',
        *(['processor = AutoImageProcessor.from_pretrained("<this folder or repo>", trust_remote_code=True)',
           "caption_ids = model.generate(**processor(images, return_tensors=\"pt\"))"] if captioning else []),
        *(["", "from transformers import pipeline",
           'translator = pipeline(model="<this folder or repo>", trust_remote_code=True)  # task vaswani-translation',
           'translator("a sentence")  # [{"translation_text": ...}]'] if translation else []),
        "```",
        *(["", "With the `hf-transformer` package: `hf-transformer translate <this folder or repo> -i source.txt -o "
           "output.txt` (or from stdin)."] if translation else []),
    ]


def build_model_card(model: Any, record: dict[str, Any]) -> str:
    """README.md text of an exported folder: YAML metadata and the prose (see the module docstring)."""
    languages = record.get("languages") or []
    metadata = card_metadata(model, record)
    task, _ = model_kind(model)
    direction = f"{languages[0]} → {languages[1]}" if len(languages) == 2 else {
        "image-to-text": "image captioning", "translation": "translation"}.get(task, "language modelling")
    dataset = record.get("dataset") or "unknown"
    seconds = record.get("training_seconds")
    step = (record.get("weights") or {}).get("step")
    return "\n".join([
        "---", metadata.to_yaml().strip(), "---", "",
        f"# {metadata.model_name}", "",
        f"A Transformer (Vaswani et al., 2017, *Attention Is All You Need*) trained from scratch for {direction} "
        f"on `{dataset}`.", "",
        f"- Languages: {', '.join(languages) if languages else 'unknown'} (source first)",
        f"- Dataset: `{dataset}`",
        f"- License: {record.get('license') or 'unknown'} (the training data's terms apply too)", "",
        "## Weights", "", *weights_lines(record.get("weights") or {}), "",
        "## Model", "", config_table(model), "",
        "## Evaluation", "", *evaluation_lines(record.get("evaluations") or {}), "",
        "## Training", "",
        f"- Global step: {step if step is not None else 'unknown'}",
        f"- Training time (wall clock since fit start): {format_duration(seconds) if seconds else 'unknown'}",
        f"- Exported: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}", "",
        "Command:", "", "```bash", record.get("command") or "unknown", "```", "",
        "## Usage", "", *usage_lines(model), "",
    ])


__all__ = ["build_model_card", "WEIGHT_KINDS"]
