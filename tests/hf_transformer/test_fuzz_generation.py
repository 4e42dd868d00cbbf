"""translate(), the "vaswani-translation" pipeline and generate() on bad input, generated with hypothesis.

Texts mix real sentences with empty and whitespace-only ones, control characters and newlines, other scripts and
emoji, lone surrogates and inputs longer than the model's positions, with valid and invalid `num_beams` /
`batch_size` and both `truncation` settings; raw `generate()` gets batches of mixed lengths, empty sources, ids
outside the vocabulary and sources longer than the positional table.

What must happen (the oracle is in fuzz_cases.py): a valid call returns one translation per text, in order, "" for
a blank text, and each equal to translating that text alone; an invalid one raises a ValueError / TypeError that
says which input and what to do; never an error from inside a kernel. A summary line per test counts the calls.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from transformers import pipeline

from data_utils import multi30k_lines
from model_utils import tiny_model

from benchmarks.fuzz_cases import Tally, check_generate, check_translate, generate_strategy, translate_strategy
from hf_transformer import iter_parallel_texts, train_tokenizer, translate

MAX_POSITIONS = 24  # short outputs (at most 24 tokens): the test stays fast
TRANSLATE_EXAMPLES = 20
GENERATE_EXAMPLES = 30
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def setup():
    pairs = list(zip(multi30k_lines("train.de.gz", 1000), multi30k_lines("train.en.gz", 1000)))
    tokenizer = train_tokenizer(iter_parallel_texts(pairs), vocab_size=400)
    model = tiny_model(seed=5, vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS,
                       tie_word_embeddings=False)
    with torch.no_grad():  # a sharper output layer: different sources get different outputs
        model.lm_head.weight.mul_(6.0)
    lines = multi30k_lines("val.de.gz", 30)
    texts = [" ".join(line.split()[:4]) for line in lines[:12]]  # a few words each
    overlong = " ".join(lines)  # far more than MAX_POSITIONS tokens
    assert len(tokenizer(overlong)["input_ids"]) > MAX_POSITIONS
    return model, tokenizer, texts, overlong


def test_translate_and_pipeline_on_bad_texts(setup):
    model, tokenizer, texts, overlong = setup
    pipe = pipeline("vaswani-translation", model=model, tokenizer=tokenizer)
    tally = Tally()

    @functools.lru_cache(maxsize=None)
    def alone(text: str, num_beams: int) -> str:
        return translate([text], model, tokenizer, num_beams=num_beams, truncation=True)[0]

    @settings(max_examples=TRANSLATE_EXAMPLES, **SETTINGS)
    @given(translate_strategy(texts, overlong, max_texts=4))
    def run(case):
        before = tally.bad
        check_translate(case, model, tokenizer, pipe, alone, tally)
        assert tally.bad == before, tally.failures[-1]

    run()
    print(tally.line("translate/pipeline fuzz"))
    assert tally.counts["calls"] == TRANSLATE_EXAMPLES
    assert tally.counts["handled"] > 0 and tally.counts["refused_clearly"] > 0


def test_generate_on_bad_ids(setup):
    model, tokenizer, _, _ = setup
    tally = Tally()

    @settings(max_examples=GENERATE_EXAMPLES, **SETTINGS)
    @given(generate_strategy(len(tokenizer), MAX_POSITIONS))
    def run(case):
        before = tally.bad
        check_generate(case, model, tally)
        assert tally.bad == before, tally.failures[-1]

    run()
    print(tally.line("generate fuzz"))
    assert tally.counts["calls"] == GENERATE_EXAMPLES
    assert tally.counts["handled"] > 0 and tally.counts["refused_clearly"] > 0


def test_training_mode_skips_the_id_check_but_not_the_empty_check(setup):
    """The id-range check costs a host sync, so it runs in evaluation and generate() only."""
    model, _, _, _ = setup
    ids = torch.tensor([[5, 6, 2]])
    model.train()
    try:
        with pytest.raises(ValueError, match=r"source `input_ids` are empty"):
            model(input_ids=ids[:, :0], decoder_input_ids=ids)
        with pytest.raises(IndexError):  # the embedding's own error: no check on the training path
            model(input_ids=ids + 10_000, decoder_input_ids=ids)
    finally:
        model.eval()
    with pytest.raises(ValueError, match=r"ids outside \[0, \d+\] \(min 5, max 10006\)"):
        model(input_ids=ids + torch.tensor([[0, 0, 10_004]]), decoder_input_ids=ids)
