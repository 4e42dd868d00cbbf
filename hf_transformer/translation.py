"""Translating text: `translate()`, the `hf-transformer translate` command, and (re-exported from
`pipeline_vaswani.py`) the `vaswani-translation` pipeline task, since transformers 5 removed `pipeline("translation")`.

    from hf_transformer import translate
    translate(["Ein Hund rennt."], model, tokenizer)              # paper decoding: beam 4, alpha 0.6
    translate(["Ein Hund rennt."], "ct2_model", None, backend="ctranslate2", compute_type="int8")  # CTranslate2

    hf-transformer translate runs/multi30k_de_en/hf_model -i test.de -o test.en   # a file (or stdin, as it streams)
    hf-transformer translate me/my-model --backend ctranslate2 --compute-type int8 < test.de

    from transformers import pipeline
    translator = pipeline("vaswani-translation", model=model, tokenizer=tokenizer)
    translator("Ein Hund rennt.")                                 # [{"translation_text": "A dog runs."}]

All decode as in §6.1: the model's generation config (beam 4, length penalty 0.6) and outputs of at most
input length + 50 tokens.
"""

import argparse
import codecs
import os
import select
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from .integrity import verify_manifest
from .pipeline_vaswani import (
    EXTRA_OUTPUT_TOKENS,
    TASK,
    VaswaniTranslationPipeline,
    add_pipeline_to_folder,
    check_source_lengths,
    check_texts,
    check_token_ids,
    paper_generation_config,
)

BACKENDS = ("pytorch", "ctranslate2")


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
    max_tokens: int | None = None,
) -> str | list[str]:
    """Translate one text or a list of texts; returns the same shape.

    Texts are sorted by token length and grouped into batches of one length (no padding) of at most `batch_size`
    texts and, when given, `max_tokens` source tokens, translated with the model's generation config (§6.1 by
    default: beam 4, alpha 0.6, at most input length + 50 tokens) and returned in the input order.
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
    for name, value in (("batch_size", batch_size), ("max_tokens", max_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if batch_size is None:
        raise ValueError("`batch_size` must be a positive integer, got None.")
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
        return translate_with(texts, single, engine, tokenizer, (batch_size, max_tokens), num_beams, length_penalty,
                              truncation)
    if tokenizer is None:
        raise ValueError("Pass the model's `tokenizer`.")
    model_was_training = model.training
    model.eval()
    try:
        return translate_with(texts, single, model, tokenizer, (batch_size, max_tokens), num_beams, length_penalty,
                              truncation)
    finally:
        model.train(model_was_training)


def translate_with(
    texts: list[str],
    single: bool,
    model: PreTrainedModel | Any,
    tokenizer: PreTrainedTokenizerBase,
    batching: tuple[int, int | None],
    num_beams: int | None,
    length_penalty: float | None,
    truncation: bool,
) -> str | list[str]:
    """translate() once the backend is chosen: `model` is our model or a `CTranslate2Model` (both have `.config`,
    `.generation_config` and a `generate`); `batching` is (batch_size, max_tokens)."""
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
    batch_size, max_tokens = batching
    for length, indices in sorted(by_length.items()):
        config = paper_generation_config(model, length, num_beams, length_penalty)
        step = min(batch_size, max(1, max_tokens // length)) if max_tokens else batch_size
        for start in range(0, len(indices), step):
            chunk = indices[start : start + step]
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



# ----------------------------------------------------------------------------------------------------------------
# `hf-transformer translate`: a file or stdin, as it streams (fairseq-interactive, OpenNMT's translate)
# ----------------------------------------------------------------------------------------------------------------


def line_chunks(stream: IO[bytes], max_lines: int, name: str) -> Iterator[list[str]]:
    """The lines of a UTF-8 byte stream, in chunks as they arrive: it waits for one complete line, then takes what
    is already there without waiting (at most `max_lines`). A file comes in chunks of `max_lines`; a pipe that writes
    a line at a time gets each line translated as it comes. A "\\r" before "\\n" is dropped; invalid UTF-8 is an
    error naming the line (`name` names the stream)."""
    fd = stream.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")()
    text, eof, line_number = "", False, 0
    while True:
        while not eof and text.count("\n") < max_lines and ("\n" not in text or select.select([fd], [], [], 0)[0]):
            data = os.read(fd, 1 << 16)
            eof = not data
            try:
                text += decoder.decode(data, final=eof)
            except UnicodeDecodeError as error:
                line = line_number + text.count("\n") + data[: error.start].count(b"\n") + 1
                raise ValueError(f"{name}: line {line} is not valid UTF-8 ({error.reason}): convert the input to "
                                 "UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None
        *lines, text = text.split("\n")
        if eof and text:
            lines, text = [*lines, text], ""
        for start in range(0, len(lines), max_lines):
            chunk = [line.removesuffix("\r") for line in lines[start : start + max_lines]]
            line_number += len(chunk)
            yield chunk
        if eof and not text:
            return


def load_translator(model: str, backend: str, compute_type: str, device: str) -> tuple[Any, PreTrainedTokenizerBase]:
    """(model, tokenizer) for `hf-transformer translate MODEL`: an exported folder or a Hub id (our model, or any
    Seq2Seq model of the Hub with the PyTorch backend); with CTranslate2 also a folder it wrote (the model is
    converted once, here, otherwise)."""
    is_ctranslate2_folder = (Path(model) / "hf_transformer_ctranslate2.json").is_file()
    if backend == "ctranslate2":
        from .ctranslate2 import load_ctranslate2, load_translation_model

        if is_ctranslate2_folder:
            return load_ctranslate2(model, None, compute_type)
        source, tokenizer = load_translation_model(model)
        return load_ctranslate2(source, tokenizer, compute_type)
    if is_ctranslate2_folder:
        raise ValueError(f"{model!r} is a CTranslate2 folder: translate it with --backend ctranslate2")
    if compute_type != "default":
        raise ValueError("--compute-type is a CTranslate2 setting: add --backend ctranslate2")
    if Path(model).is_dir():
        verify_manifest(model)  # an exported folder: every file as it was written (checksums.sha256)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(model)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    return loaded.to(device).eval(), AutoTokenizer.from_pretrained(model)


def parse_translate_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hf-transformer translate",
        description="Translate a file, or stdin as it streams, with an exported model folder, a Hub model id or a "
                    "CTranslate2 folder: one sentence per line in, one translation per line out, in the input "
                    "order (batched by tokens and sorted by length inside each chunk of lines).")
    parser.add_argument("model", help="an exported folder (e.g. runs/quickstart/hf_model), a Hub model id, or (with "
                                      "--backend ctranslate2) a folder written by hf-transformer-ctranslate2")
    parser.add_argument("-i", "--input", help="the file to translate (UTF-8, one sentence per line); default stdin, "
                                              "translated as the lines come")
    parser.add_argument("-o", "--output", help="where the translations go; default stdout")
    parser.add_argument("--num-beams", type=int, default=None, help="beam size (default: the model's, 4 in §6.1)")
    parser.add_argument("--length-penalty", type=float, default=None,
                        help="length penalty alpha (default: the model's, 0.6 in §6.1)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="source tokens per batch (default 4096)")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch at most (default 64)")
    parser.add_argument("--buffer-lines", type=int, default=1024,
                        help="lines read (when available) before translating, sorted by length together "
                             "(default 1024; stdin never waits for more than one line)")
    parser.add_argument("--truncation", action="store_true",
                        help="cut sentences longer than the model's positions instead of stopping with an error")
    parser.add_argument("--backend", choices=BACKENDS, default="pytorch",
                        help="pytorch (generate()) or ctranslate2 (pip install hf-transformer[ctranslate2])")
    parser.add_argument("--compute-type", default="default",
                        help="CTranslate2 compute type: int8, float32, int8_float16, ... (default: as stored)")
    parser.add_argument("--device", default="auto", help="pytorch device: auto, cpu, cuda, cuda:1 (default auto)")
    args = parser.parse_args(argv)
    if args.buffer_lines < 1:
        parser.error("--buffer-lines must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """`hf-transformer translate MODEL [-i FILE] [-o FILE] ...`; returns the exit status."""
    args = parse_translate_args(argv)
    transformers_logging.disable_progress_bar()  # no "Loading weights" bar between the translations
    try:
        model, tokenizer = load_translator(args.model, args.backend, args.compute_type, args.device)
        source = open(args.input, "rb") if args.input else sys.stdin.buffer
        target = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        try:
            count = 0
            for chunk in line_chunks(source, args.buffer_lines, args.input or "stdin"):
                outputs = translate(chunk, model, tokenizer, batch_size=args.batch_size, num_beams=args.num_beams,
                                    length_penalty=args.length_penalty, truncation=args.truncation,
                                    backend=args.backend, max_tokens=args.max_tokens)
                target.write("".join(f"{line}\n" for line in outputs))
                target.flush()
                count += len(chunk)
        finally:
            for handle, given in ((source, args.input), (target, args.output)):
                if given:
                    handle.close()
    except (ValueError, TypeError, OSError) as error:
        print(f"hf-transformer translate: error: {error}", file=sys.stderr)
        return 1
    if args.output:
        print(f"translated {count} lines into {args.output}", file=sys.stderr)
    return 0


__all__ = ["translate", "TASK", "EXTRA_OUTPUT_TOKENS", "VaswaniTranslationPipeline", "add_pipeline_to_folder",
           "check_source_lengths", "check_texts", "check_token_ids", "paper_generation_config", "line_chunks", "main"]
