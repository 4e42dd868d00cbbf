"""VaswaniForCausalLM: the decoder stack alone, as a language model with generate() and a DynamicCache."""

import json
import os

import pytest
import torch
from helpers import json_result, run_python
from transformers import AutoModelForCausalLM, DynamicCache
from variant_utils import VARIANTS, assert_cached_generation_is_uncached_generation, varied_causal_lm

from hf_transformer import VaswaniConfig, VaswaniForCausalLM
from hf_transformer.modeling_vaswani import CACHE_FIELD


def test_a_decoder_only_config_mirrors_the_decoder_sizes():
    config = VaswaniConfig(vocab_size=50, decoder_layers=3, decoder_attention_heads=4, d_model=32,
                           decoder_ffn_dim=48, is_encoder_decoder=False)
    assert (config.num_hidden_layers, config.num_attention_heads) == (3, 4)  # what the cache builder reads
    assert len(DynamicCache(config=config).layers) == 3


def test_structure_tying_and_auto_class():
    model = varied_causal_lm(tie_word_embeddings=True)
    assert len(model.model.layers) == 2
    assert all(layer.encoder_attn is None for layer in model.model.layers)  # no cross-attention
    assert not any("encoder" in name for name, _ in model.named_parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert type(AutoModelForCausalLM.from_config(model.config)) is VaswaniForCausalLM


def test_labels_give_the_shifted_next_token_loss():
    model = varied_causal_lm()
    ids = torch.randint(4, 101, (2, 9))
    labels = ids.clone()
    labels[1, :3] = -100
    out = model(input_ids=ids, labels=labels)
    log_probs = out.logits.log_softmax(-1)
    picked = log_probs[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # position t predicts token t + 1
    keep = labels[:, 1:] != -100
    torch.testing.assert_close(out.loss, -picked[keep].mean())
    assert getattr(out, CACHE_FIELD) is None  # training does not build a cache


@pytest.mark.parametrize("variant", ["full"] + list(VARIANTS))
def test_future_tokens_never_change_earlier_logits(variant):
    model = varied_causal_lm(**VARIANTS.get(variant, {}))
    ids = torch.randint(4, 101, (1, 13))
    changed = ids.clone()
    changed[0, 8:] = torch.randint(4, 101, (5,))
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_prefix_continuation_is_greedy_next_token_and_uses_a_dynamic_cache():
    model = varied_causal_lm()
    prefix = torch.tensor([[1, 17, 42, 5]])
    out = model.generate(input_ids=prefix, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    assert isinstance(getattr(out, CACHE_FIELD), DynamicCache)
    assert torch.equal(out.sequences[:, :4], prefix)
    sequence = prefix
    for _ in range(6):  # greedy by hand, recomputing everything
        next_token = model(input_ids=sequence).logits[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, next_token], 1)
    assert torch.equal(out.sequences, sequence)


def test_cached_and_uncached_generation_are_identical():
    assert_cached_generation_is_uncached_generation(varied_causal_lm(), input_ids=torch.randint(4, 101, (3, 4)))


def test_save_load_round_trip_and_trust_remote_code(tmp_path):
    model = varied_causal_lm(**VARIANTS["relative+local"], tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "model")
    auto_map = json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_vaswani.VaswaniForCausalLM"
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "model", output_loading_info=True)
    assert type(loaded) is VaswaniForCausalLM
    assert not any(info.values()), info
    ids = torch.tensor([[1, 17, 42, 5, 9]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded.eval()(input_ids=ids).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    expected = model.generate(input_ids=ids, num_beams=4, max_new_tokens=10, do_sample=False)
    snippet = f"""
import json, sys
sys.modules["hf_transformer"] = None  # only the repository's code may run
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
out = model.generate(input_ids=torch.tensor({ids.tolist()}), num_beams=4, max_new_tokens=10, do_sample=False)
print("RESULT-JSON: " + json.dumps(out.tolist()))
"""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": os.environ.get("PATH", "")}
    assert json_result(run_python(snippet, env, timeout=300, cwd=tmp_path)) == expected.tolist()
