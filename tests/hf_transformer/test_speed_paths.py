"""The model's speed paths: torch.compile without graph breaks, the beam-search cache hook, beams equal to Marian's.
Timings themselves are measured by benchmarks/, never here."""

import copy

import torch
from model_utils import labelled_batch, reverse_task_batch, tiny_model
from transformers import DynamicCache, EncoderDecoderCache

from benchmarks import common


def test_training_step_compiles_as_one_graph():
    """fullgraph=True raises on any graph break; forward and backward through the compiled graph match eager."""
    torch._dynamo.reset()
    eager = tiny_model(seed=4).train()
    eager.set_attn_implementation("sdpa")
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    input_ids, attention_mask, labels = labelled_batch()  # padded source: the mask path is traced too
    losses = []
    for model, forward in ((eager, eager), (compiled_model, compiled)):
        loss = forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=0)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled_model.parameters()):
        assert p_compiled.grad is not None, name
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_beam_hook_reorders_only_the_decoder_self_attention_cache():
    model = tiny_model(seed=0)
    generator = torch.Generator().manual_seed(0)
    self_cache, cross_cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
    self_keys = torch.randn(6, 4, 5, 8, generator=generator)  # 2 sentences x 3 beams
    encoder_keys = torch.randn(2, 4, 7, 8, generator=generator).repeat_interleave(3, dim=0)  # beams share it
    self_cache.update(self_keys, self_keys + 1, 0)
    cross_cache.update(encoder_keys, encoder_keys - 1, 0)
    cache = EncoderDecoderCache(self_cache, cross_cache)
    reference = copy.deepcopy(cache)
    beam_idx = torch.tensor([2, 2, 0, 4, 3, 3])  # beams stay inside their sentence
    assert model._reorder_cache(cache, beam_idx) is cache
    reference.reorder_cache(beam_idx)  # the library's full reorder of both caches
    for ours, full in ((cache.self_attention_cache, reference.self_attention_cache),
                       (cache.cross_attention_cache, reference.cross_attention_cache)):
        assert torch.equal(ours.layers[0].keys, full.layers[0].keys)
        assert torch.equal(ours.layers[0].values, full.layers[0].values)
    assert torch.equal(cache.self_attention_cache.layers[0].keys, self_keys[beam_idx])


def test_beam_search_matches_marian_with_the_same_weights():
    """The hook changes nothing but the copies: beam 4 gives Marian's tokens (a half-trained model, so beams
    differ and finish at different lengths)."""
    from test_generation import half_trained_reverse_model

    model = copy.deepcopy(half_trained_reverse_model())
    model.set_attn_implementation("sdpa")
    marian = common.marian_twin(model).eval()
    input_ids, attention_mask, _ = reverse_task_batch(torch.Generator().manual_seed(7), 6)
    settings = dict(num_beams=4, length_penalty=0.6, max_new_tokens=12, do_sample=False, early_stopping=True)
    ours = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
    theirs = marian.generate(input_ids=input_ids, attention_mask=attention_mask, decoder_start_token_id=1, **settings)
    assert (ours == model.config.eos_token_id).any()
    assert torch.equal(ours, theirs)
