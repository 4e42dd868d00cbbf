"""Incremental decoding: the KV cache changes nothing but the speed, for every decoding strategy."""

import copy
import functools

import pytest
import torch
from model_utils import reverse_task_batch, source_batch, tiny_model, train_reverse_model
from transformers import EncoderDecoderCache, GenerationConfig

from hf_transformer.modeling_vaswani import CACHE_FIELD

STRATEGIES = {
    "greedy": dict(num_beams=1, do_sample=False),
    "beam": dict(num_beams=4, length_penalty=0.6, do_sample=False),
    "beam_returns_3": dict(num_beams=4, num_return_sequences=3, length_penalty=1.3, do_sample=False),
    "sampling": dict(do_sample=True, top_k=20, num_beams=1),
}


def trained_ish_model(attn_implementation: str):
    """Random weights decode one repeated token and never stop. 60 Adam steps on the reverse task give a model
    that is half right: hypotheses differ between beams and end with </s> at different lengths."""
    model = copy.deepcopy(half_trained_reverse_model())
    model.set_attn_implementation(attn_implementation)
    return model


@functools.cache
def half_trained_reverse_model():
    return train_reverse_model(60, seed=0)


def output_lengths(sequences: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Tokens up to and including the first </s> (the whole row when there is none)."""
    is_eos = sequences == eos_token_id
    return torch.where(is_eos.any(-1), is_eos.float().argmax(-1) + 1, sequences.shape[1])


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_cached_and_uncached_generation_are_identical(strategy, attn_implementation):
    model = trained_ish_model(attn_implementation)
    input_ids, attention_mask, _ = reverse_task_batch(torch.Generator().manual_seed(5), 6)
    outputs = []
    for use_cache in (True, False):
        torch.manual_seed(123)
        outputs.append(model.generate(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache,
                                      max_new_tokens=12, **STRATEGIES[strategy]))
    assert torch.equal(outputs[0], outputs[1])
    expected_rows = 6 * STRATEGIES[strategy].get("num_return_sequences", 1)
    assert outputs[0].shape[0] == expected_rows and outputs[0].shape[1] > 2
    assert (outputs[0][:, 0] == model.config.decoder_start_token_id).all()
    if strategy != "sampling":  # some hypotheses end with </s> before the limit: finished beams are exercised
        assert (outputs[0] == model.config.eos_token_id).any()


def test_cache_matches_a_full_forward_step_by_step():
    model = trained_ish_model("sdpa")
    input_ids, attention_mask = source_batch()
    target = torch.randint(4, 101, (3, 7))
    target[:, 0] = 1
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=target).logits
        encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        cache, steps = None, []
        for t in range(7):
            out = model(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                        decoder_input_ids=target[:, t : t + 1], cache=cache, use_cache=True)
            cache = getattr(out, CACHE_FIELD)
            steps.append(out.logits)
    assert isinstance(cache, EncoderDecoderCache) and cache.get_seq_length() == 7
    assert all(cache.is_updated.values())  # cross-attention keys/values were computed once and reused
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_chunked_prefill_over_a_cache_matches_full_forward():
    """Several new target tokens over a non-empty cache need an explicit causal mask offset by the cache length."""
    model = trained_ish_model("sdpa")
    input_ids, attention_mask = source_batch()
    target = torch.randint(4, 101, (3, 9))
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=target).logits
        first = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=target[:, :4],
                      use_cache=True)
        second = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=target[:, 4:],
                       cache=getattr(first, CACHE_FIELD), use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], dim=1), full, atol=1e-5, rtol=0)


def test_generation_config_carries_the_papers_decoding(tmp_path):
    model = tiny_model()
    assert model.generation_config.num_beams == 4
    assert model.generation_config.length_penalty == 0.6
    model.save_pretrained(tmp_path)
    saved = GenerationConfig.from_pretrained(tmp_path)
    assert saved.num_beams == 4 and saved.length_penalty == 0.6
    assert saved.decoder_start_token_id == 1 and saved.eos_token_id == 2 and saved.pad_token_id == 0


def test_length_penalty_changes_the_beam_choice_as_documented():
    """alpha > 0 favours longer hypotheses (scores are divided by length^alpha): mean length never drops."""
    model = trained_ish_model("sdpa")
    input_ids, attention_mask, _ = reverse_task_batch(torch.Generator().manual_seed(5), 6)
    lengths = []
    for alpha in (-3.0, 0.0, 3.0):
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=4, length_penalty=alpha,
                             max_new_tokens=15, min_new_tokens=1)
        lengths.append(output_lengths(out, model.config.eos_token_id).float().mean().item())
    assert lengths[0] <= lengths[1] <= lengths[2] and lengths[0] < lengths[2], lengths
