"""The speed paths: torch.compile without graph breaks, the beam-search cache hook, fused Adam, the `compile` option
of the training module, and the benchmarks' own arithmetic (FLOPs, batches, the Marian twin). Timings themselves
are measured by benchmarks/, never here."""

import copy

import torch
from model_utils import reverse_task_batch, source_batch, tiny_config, tiny_model
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache, EncoderDecoderCache

from benchmarks import common
from hf_transformer import VaswaniForConditionalGeneration
from lightning_modules.schedules import paper_adam



def padded_batch():
    input_ids, attention_mask = source_batch(batch=3, length=11)
    labels = torch.randint(4, 101, (3, 8), generator=torch.Generator().manual_seed(2))
    labels[2, 5:] = -100
    return input_ids, attention_mask, labels


def test_training_step_compiles_as_one_graph():
    """fullgraph=True raises on any graph break; forward and backward through the compiled graph match eager."""
    torch._dynamo.reset()
    eager = tiny_model(seed=4).train()
    eager.set_attn_implementation("sdpa")
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    input_ids, attention_mask, labels = padded_batch()  # padded source: the mask path is traced too
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


def test_paper_adam_is_fused_on_plain_tensors_and_steps_like_the_loop_version():
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    twin = copy.deepcopy(layer)
    fused, loop = paper_adam(layer.parameters(), lr=1e-2), paper_adam(twin.parameters(), lr=1e-2, fused=False)
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]
    for step in range(3):
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(step))
        for model, optimizer in ((layer, fused), (twin, loop)):
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
    torch.testing.assert_close(layer.weight, twin.weight, atol=1e-6, rtol=1e-5)
    assert not torch.equal(layer.weight, copy.deepcopy(twin).weight * 0)  # the weights did move


def test_translation_module_compile_option(monkeypatch):
    from lightning_modules.tasks import TranslationModule

    compiled_calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled_calls.append(fn) or fn)
    sizes = dict(vocab_size=101, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)
    auto = TranslationModule(model_config=sizes)
    auto.on_fit_start()  # on CPU: auto is off
    assert auto.compiled_forward is None and compiled_calls == []
    forced = TranslationModule(model_config=sizes, compile=True)
    forced.on_fit_start()
    assert compiled_calls == [forced.model.forward] and forced.compiled_forward is not None
    assert "compile" not in forced.hparams  # a runtime choice, not part of the checkpointed model description


# ---------------------------------------------------------------------------------------------------------------
# The benchmarks' arithmetic
# ---------------------------------------------------------------------------------------------------------------


def test_benchmark_flop_count_matches_torch_flop_counter():
    config = tiny_config()
    model = VaswaniForConditionalGeneration(config).eval()
    model.set_attn_implementation("eager")  # the counter sees its matmuls (it has no formula for CPU flash SDPA)
    pairs = [([5] * 9 + [2], [6] * 6 + [2])] * 3  # equal lengths: no padding, so every counted FLOP is useful
    batch = common.collate(pairs, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              decoder_input_ids=batch["decoder_input_ids"], use_cache=False)
    assert common.forward_flops(config, batch) == counter.get_total_flops()
    assert common.training_flops(config, batch) == 3 * counter.get_total_flops()


def test_benchmark_batches_respect_the_budget_and_the_twin_matches():
    pairs = common.wmt_like_pairs(300, vocab_size=101, seed=0)
    lengths = [len(s) for s, _ in pairs]
    assert 20 < sorted(lengths)[150] < 32 and max(lengths) > 60  # median about 25, a long tail
    batches = common.token_budget_batches(pairs, max_tokens=400, count=5, seed=0, device=torch.device("cpu"))
    assert len(batches) == 5
    for batch in batches:
        assert batch["input_ids"].numel() <= 400 and batch["labels"].numel() <= 400
        assert torch.equal(batch["decoder_input_ids"][:, 1:].masked_fill(batch["labels"][:, :-1] == -100, -100),
                           batch["labels"][:, :-1])
    model = tiny_model(seed=5)
    marian = common.marian_twin(model)
    input_ids, attention_mask, labels = padded_batch()
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
        theirs = marian(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
