"""Attention maps of a trained translation model, as PNG heatmaps with the tokens on the axes.

    hf-transformer-attention runs/quickstart/hf_model "four hundred twenty-one" --output-dir maps/
    python -m hf_transformer.attention_maps runs/quickstart/hf_model "four hundred twenty-one" --heads all

Translates the sentence (greedy, or beam search with `--num-beams`), reruns one forward pass over the produced
output with `output_attentions=True`, and writes into `--output-dir`:

- `cross_attention.png`: encoder-decoder attention of one decoder layer (§3.2.3), heads averaged (or one panel per
  head with `--heads all`): row t is what the decoder looked at while producing output token t, so a translation
  that reorders words shows up as a non-diagonal path;
- `encoder_self_attention.png`, `decoder_self_attention.png`: the self-attention of that layer, one panel per head;
- `alignment.npy` (target tokens x source tokens, the heads-averaged cross-attention, each row sums to 1) and
  `alignment.json` (the same matrix with the tokens, the translation and the layer).

matplotlib is imported only when a picture is drawn (`pip install "hf-transformer[plots]"`).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import Seq2SeqLMOutput

from .translation import paper_generation_config

#: Pixels per inch of the written PNGs; with `panel_inches` this fixes their size in pixels.
DPI = 100


def panel_inches(rows: int, columns: int) -> tuple[float, float]:
    """(width, height) in inches of one heatmap panel of rows x columns cells: 0.3 inch per cell plus room for the
    token labels, at least 3 inches a side."""
    return max(3.0, 0.3 * columns + 1.5), max(3.0, 0.3 * rows + 1.5)


def figure_pixels(rows: int, columns: int, panels: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of a PNG of `panels` panels of rows x columns cells (at most 4 panels a row)."""
    width, height = panel_inches(rows, columns)
    per_row = min(panels, 4)
    return round(width * per_row * DPI), round(height * math.ceil(panels / per_row) * DPI)


def token_labels(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    """Each token as readable text (byte-level pieces decoded one by one; the leading space shown as "▁")."""
    labels = []
    for token_id in ids:
        if token_id in tokenizer.all_special_ids:
            labels.append(tokenizer.convert_ids_to_tokens(token_id))
            continue
        piece = tokenizer.convert_ids_to_tokens(token_id)
        text = tokenizer.convert_tokens_to_string([piece])
        labels.append(("▁" + text.lstrip(" ")) if piece.startswith("Ġ") else text)
    return labels


def draw_heatmaps(
    matrices: list[np.ndarray], titles: list[str], row_labels: list[str], column_labels: list[str], path: Path,
    xlabel: str, ylabel: str,
) -> Path:
    """One heatmap panel per matrix (rows x columns, values in [0, 1]), up to 4 panels a row, saved as a PNG of
    exactly `figure_pixels(rows, columns, len(matrices))` pixels."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows, columns = matrices[0].shape
    width, height = figure_pixels(rows, columns, len(matrices))
    per_row = min(len(matrices), 4)
    grid_rows = math.ceil(len(matrices) / per_row)
    figure, axes = plt.subplots(grid_rows, per_row, figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False)
    for index, axis in enumerate(axes.flat):
        if index >= len(matrices):
            axis.axis("off")
            continue
        axis.imshow(matrices[index], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        axis.set_title(titles[index], fontsize=9)
        axis.set_xticks(range(columns), column_labels, rotation=90, fontsize=7)
        axis.set_yticks(range(rows), row_labels, fontsize=7)
        axis.set_xlabel(xlabel, fontsize=8)
        axis.set_ylabel(ylabel, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)  # no bbox_inches="tight": the pixel size stays what figure_pixels says
    plt.close(figure)
    return path


def check_request(model: PreTrainedModel, source: str, layer: int, heads: str) -> int:
    """The arguments of `attention_maps`, checked; returns the layer index counted from the first."""
    if heads not in ("mean", "all"):
        raise ValueError(f"heads must be 'mean' (average the heads) or 'all' (one panel per head), got {heads!r}")
    if not source.strip():
        raise ValueError("source is empty: give the sentence to translate")
    if not getattr(model.config, "is_encoder_decoder", False):
        raise ValueError("attention maps need a translation (encoder-decoder) model; this one is decoder-only")
    layers = model.config.decoder_layers
    if not -layers <= layer < layers:
        raise ValueError(f"layer must be in [{-layers}, {layers - 1}] (the model has {layers} decoder layers), "
                         f"got {layer}")
    return layer % layers


def draw_all(outputs: Seq2SeqLMOutput, cross: np.ndarray, alignment: np.ndarray, layer: int, heads: str,
             source_labels: list[str], target_labels: list[str], decoder_labels: list[str], folder: Path) -> None:
    """The three PNGs of `attention_maps`: cross-attention (heads averaged or one panel per head), encoder and
    decoder self-attention (one panel per head)."""
    head_titles = [f"head {h}" for h in range(cross.shape[0])]
    if heads == "mean":
        draw_heatmaps([alignment], [f"cross-attention, layer {layer}, heads averaged"], target_labels, source_labels,
                      folder / "cross_attention.png", "source", "output")
    else:
        draw_heatmaps(list(cross), [f"cross-attention L{layer} {t}" for t in head_titles], target_labels,
                      source_labels, folder / "cross_attention.png", "source", "output")
    encoder_self = outputs.encoder_attentions[layer][0].float().cpu().numpy()  # (H, S, S)
    draw_heatmaps(list(encoder_self), [f"encoder self-attention L{layer} {t}" for t in head_titles], source_labels,
                  source_labels, folder / "encoder_self_attention.png", "key", "query")
    decoder_self = outputs.decoder_attentions[layer][0].float().cpu().numpy()  # (H, T, T), causal
    draw_heatmaps(list(decoder_self), [f"decoder self-attention L{layer} {t}" for t in head_titles],
                  decoder_labels, decoder_labels, folder / "decoder_self_attention.png", "key", "query")


@torch.no_grad()
def attention_maps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    output_dir: str | Path,
    layer: int = -1,
    heads: str = "mean",
    num_beams: int = 1,
) -> dict:
    """Translate `source`, rerun the model on its output with `output_attentions=True`, and write the PNGs and
    the alignment matrix into `output_dir` (see the module docstring). Returns the content of `alignment.json`.

    layer: decoder (and encoder) layer to show; negative counts from the last.
    heads: "mean" averages the cross-attention heads in one panel; "all" draws one panel per head.
    """
    layer = check_request(model, source, layer, heads)
    model.eval()
    encoded = tokenizer(source, return_tensors="pt", truncation=True,
                        max_length=model.config.max_position_embeddings)
    input_ids = encoded["input_ids"].to(model.device)  # (1, S), ends with </s>
    config = paper_generation_config(model, input_ids.shape[1], num_beams=num_beams, length_penalty=None)
    output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                            generation_config=config)  # (1, 1 + T): <s> y_1 ... y_T (ending with </s>)
    decoder_input_ids = output[:, :-1]  # teacher forcing on the model's own output: <s> y_1 ... y_{T-1}
    outputs = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids, output_attentions=True,
                    use_cache=False, return_dict=True)
    cross = outputs.cross_attentions[layer][0].float().cpu().numpy()  # (H, T, S)
    alignment = cross.mean(axis=0)  # (T, S): row t, the attention while producing y_t; rows sum to 1
    source_labels = token_labels(tokenizer, input_ids[0].tolist())
    target_labels = token_labels(tokenizer, output[0, 1:].tolist())  # the tokens each row produced

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "alignment.npy", alignment.astype(np.float32))
    result = {
        "source": source,
        "translation": tokenizer.decode(output[0], skip_special_tokens=True),
        "layer": layer,
        "num_heads": int(cross.shape[0]),
        "source_tokens": source_labels,
        "target_tokens": target_labels,
        "alignment": alignment.round(6).tolist(),
    }
    (folder / "alignment.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")

    draw_all(outputs, cross, alignment, layer, heads, source_labels, target_labels,
             token_labels(tokenizer, decoder_input_ids[0].tolist()), folder)
    return result


def main(argv: list[str] | None = None) -> int:
    """The `hf-transformer-attention` console script."""
    parser = argparse.ArgumentParser(
        prog="hf-transformer-attention",
        description="Translate a sentence with a saved model and draw its attention maps as PNG heatmaps.",
    )
    parser.add_argument("model", help="folder (or hub id) with the model and its tokenizer (save_pretrained)")
    parser.add_argument("source", help="the sentence to translate")
    parser.add_argument("--output-dir", default="attention_maps", help="where the PNGs and alignment go")
    parser.add_argument("--layer", type=int, default=-1, help="decoder/encoder layer to show (default: the last)")
    parser.add_argument("--heads", choices=("mean", "all"), default="mean",
                        help="cross-attention heads averaged in one panel, or one panel per head")
    parser.add_argument("--num-beams", type=int, default=1, help="1: greedy decoding; 4: the paper's beam search")
    args = parser.parse_args(argv)
    if args.num_beams < 1:
        parser.error(f"--num-beams must be >= 1, got {args.num_beams}")

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model)
    try:
        result = attention_maps(model, tokenizer, args.source, args.output_dir, layer=args.layer, heads=args.heads,
                                num_beams=args.num_beams)
    except ValueError as error:
        parser.error(str(error))
    print(f"{result['source']!r} -> {result['translation']!r}")
    print(f"wrote cross_attention.png, encoder_self_attention.png, decoder_self_attention.png, alignment.npy "
          f"({len(result['target_tokens'])} x {len(result['source_tokens'])}) and alignment.json to {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
