"""Training speed options: fused Adam and the `compile` option of the task modules."""

import copy

import torch
from torch import nn

from lightning_modules.schedules import paper_adam


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
