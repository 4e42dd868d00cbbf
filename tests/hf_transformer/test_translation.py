"""The translation entry points: translate() and the "vaswani-translation" pipeline, with a real tokenizer."""

import pytest
import torch
from data_utils import multi30k_lines
from model_utils import tiny_model
from transformers import pipeline

from hf_transformer import VaswaniTranslationPipeline, iter_parallel_texts, train_tokenizer, translate


@pytest.fixture(scope="module")
def tokenizer():
    pairs = zip(multi30k_lines("train.de.gz", 2000), multi30k_lines("train.en.gz", 2000))
    return train_tokenizer(iter_parallel_texts(pairs), vocab_size=600)


@pytest.fixture(scope="module")
def model(tokenizer):
    model = tiny_model(seed=2, vocab_size=len(tokenizer), max_position_embeddings=128, tie_word_embeddings=False)
    with torch.no_grad():  # sharpen the random output layer so that different sources get different outputs
        model.lm_head.weight.mul_(6.0)
    return model


def reference(model, tokenizer, text: str, num_beams: int = 4) -> str:
    """One sentence alone, no padding, §6.1 length limit."""
    encoded = tokenizer(text, return_tensors="pt")
    out = model.generate(**encoded, num_beams=num_beams, length_penalty=0.6,
                         max_length=encoded["input_ids"].shape[1] + 51)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def test_translate_batches_keep_the_input_order_and_match_one_by_one(model, tokenizer):
    sources = multi30k_lines("val.de.gz", 12)
    batched = translate(sources, model, tokenizer, batch_size=5)
    assert isinstance(batched, list) and len(batched) == 12
    assert batched == [reference(model, tokenizer, text) for text in sources]
    assert len(set(batched)) > 1  # different sources, different outputs: the order check means something
    assert translate(sources[3], model, tokenizer) == batched[3]  # a string in, a string out
    assert translate([], model, tokenizer) == []


def test_translate_handles_blank_and_rejects_overlong_inputs(model, tokenizer):
    sources = ["", "Ein Hund läuft.", "   "]
    assert translate(sources, model, tokenizer) == ["", reference(model, tokenizer, sources[1]), ""]
    overlong = "Hund " * 200
    with pytest.raises(ValueError, match=r"Input 1 has \d+ tokens but the model reads at most 128"):
        translate(["Ein Hund.", overlong], model, tokenizer)
    assert isinstance(translate(overlong, model, tokenizer, truncation=True), str)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        translate(["Ein Hund.", 3], model, tokenizer)


def test_pipeline_task(model, tokenizer):
    translator = pipeline("vaswani-translation", model=model, tokenizer=tokenizer)
    assert isinstance(translator, VaswaniTranslationPipeline)
    sources = multi30k_lines("val.de.gz", 3)
    outputs = translator(sources)
    assert [o["translation_text"] for o in outputs] == translate(sources, model, tokenizer)
    assert translator("") == [{"translation_text": ""}]  # a text gives a list, as transformers' pipelines did
    assert translator(sources[0], num_beams=1)[0]["translation_text"] == reference(model, tokenizer, sources[0], 1)
