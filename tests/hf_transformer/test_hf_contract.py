"""transformers' own model contract, on the installed release: the cache under the name generate() uses, tied
embeddings loaded as the library loads Marian's, the causal-LM signature, classes built from their config, outputs
recorded by the library's hooks, and positions that stay inside the model."""

import json
import math
import os
import warnings

import pytest
import torch
import transformers
from helpers import json_result, run_python
from model_utils import source_batch, tiny_config, tiny_model
from packaging.version import Version
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, EncoderDecoderCache, MarianConfig, MarianMTModel
from variant_utils import VARIANTS, varied_causal_lm, varied_seq2seq

from hf_transformer import (
    VaswaniConfig,
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForImageCaptioning,
)
from hf_transformer.modeling_vaswani import CACHE_FIELD, VaswaniDecoder, VaswaniEncoder, VaswaniImageEncoder

# ---------------------------------------------------------------------------------------------------------------
# 1. The cache travels under the name the installed release passes and reads
# ---------------------------------------------------------------------------------------------------------------

# transformers 5.24.0 renamed the cache argument and output field `past_key_values` -> `cache`.
RELEASE_CACHE_NAME = "cache" if Version(transformers.__version__) >= Version("5.24.0") else "past_key_values"


def test_outputs_carry_the_cache_under_the_name_of_the_installed_release():
    assert CACHE_FIELD == RELEASE_CACHE_NAME
    model = tiny_model()
    input_ids, attention_mask = source_batch()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :2],
                    use_cache=True)
    assert RELEASE_CACHE_NAME in out.keys()
    tuple_out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :2],
                      use_cache=True, return_dict=False)
    assert isinstance(tuple_out[1], EncoderDecoderCache)  # logits, cache, ... as in the library's tuples
    assert isinstance(out[RELEASE_CACHE_NAME], EncoderDecoderCache)


def test_both_names_of_the_cache_argument_give_the_same_step():
    """generate() of transformers < 5.24 passes `past_key_values=`, of 5.24 and later `cache=`: both are read; the old
    name warns only where the release deprecated it."""
    model = varied_seq2seq()
    input_ids, attention_mask = source_batch()
    start = torch.ones(3, 1, dtype=torch.long)
    with torch.no_grad():
        outputs = []
        for name in ("cache", "past_key_values"):
            first = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=start, use_cache=True)
            cache = getattr(first, CACHE_FIELD)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                second = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=start + 5,
                               use_cache=True, **{name: cache})
            # the old name is deprecated where the release renamed it (as in its own models), silent before
            deprecated = any("`past_key_values` is deprecated" in str(w.message) for w in caught)
            assert deprecated == (name == "past_key_values" and RELEASE_CACHE_NAME == "cache")
            assert getattr(second, CACHE_FIELD).get_seq_length() == 2
            outputs.append(second.logits)
    torch.testing.assert_close(outputs[0], outputs[1], atol=0, rtol=0)


GENERATE_EVERY_HEAD = """
import json, torch, hf_transformer
from hf_transformer import VaswaniConfig, VaswaniForCausalLM, VaswaniForConditionalGeneration, VaswaniForImageCaptioning
sizes = dict(vocab_size=61, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
             decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64)
torch.manual_seed(0)
heads = {
    "seq2seq": (VaswaniForConditionalGeneration(VaswaniConfig(**sizes)), dict(input_ids=torch.randint(4, 61, (2, 5)))),
    "causal": (VaswaniForCausalLM(VaswaniConfig(**sizes, is_encoder_decoder=False)),
               dict(input_ids=torch.randint(4, 61, (2, 5)))),
    "captioning": (VaswaniForImageCaptioning(VaswaniConfig(**sizes, image_size=8, patch_size=4)),
                   dict(pixel_values=torch.randn(2, 3, 8, 8))),
}
lengths = {}
for name, (model, inputs) in heads.items():
    for strategy in (dict(num_beams=1), dict(num_beams=3), dict(do_sample=True, num_beams=1)):
        out = model.eval().generate(**inputs, **strategy, max_new_tokens=6, min_new_tokens=6, use_cache=True)
        lengths[f"{name} {strategy}"] = out.shape[1]
print("RESULT-JSON: " + json.dumps(lengths))
"""


def test_generate_with_the_cache_works_for_every_head_without_a_deprecation_warning(tmp_path):
    """Greedy, beam and sampling, with the cache, on the seq2seq, causal and captioning heads, in a fresh process
    (the library warns only once per process): none may fail, none may log that an old name is deprecated."""
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "warning"}
    proc = run_python(GENERATE_EVERY_HEAD, env, timeout=300, cwd=tmp_path)
    lengths = json_result(proc)
    assert len(lengths) == 9
    assert all(length in (7, 11) for length in lengths.values()), lengths  # 1 + 6 (seq2seq), 5 + 6 (causal)
    assert "deprecated" not in proc.stderr.lower(), proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------------------
# 2. Tied embeddings: a checkpoint without them loads as Marian's does, reported missing and initialised
# ---------------------------------------------------------------------------------------------------------------


def marian_like(tie_word_embeddings: bool) -> tuple[MarianMTModel, VaswaniForConditionalGeneration]:
    config = tiny_config(tie_word_embeddings=tie_word_embeddings)
    marian = MarianMTModel(MarianConfig(
        vocab_size=config.vocab_size, d_model=config.d_model, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=64, pad_token_id=0, decoder_start_token_id=1, tie_word_embeddings=tie_word_embeddings,
        share_encoder_decoder_embeddings=True,
    ))
    return marian, VaswaniForConditionalGeneration(config)


def without_keys(folder, drop) -> None:
    """Rewrite a saved model.safetensors without the keys `drop(key)` selects."""
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if not drop(k)}, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_a_checkpoint_without_the_embedding_reports_it_missing_and_initialises_it_like_marian(tmp_path,
                                                                                                tie_word_embeddings):
    is_embedding = lambda key: "shared" in key or "embed_tokens" in key  # noqa: E731
    reports, loaded = {}, {}
    for name, model in zip(("marian", "ours"), marian_like(tie_word_embeddings)):
        model.save_pretrained(tmp_path / name)
        without_keys(tmp_path / name, is_embedding)
        loaded[name], info = type(model).from_pretrained(tmp_path / name, output_loading_info=True)
        reports[name] = info["missing_keys"]
        shared = loaded[name].model.shared.weight
        assert shared.device.type == "cpu" and loaded[name].lm_head.weight.device.type == "cpu"  # not on "meta"
        assert torch.isfinite(shared).all() and shared.std() > 0  # initialised, not zeros or garbage
    shared = loaded["ours"].model.shared.weight
    assert loaded["ours"].model.encoder.embed_tokens.weight is shared  # §3.4: one matrix, tied output or not
    assert loaded["ours"].model.decoder.embed_tokens.weight is shared
    assert (loaded["ours"].lm_head.weight is shared) == tie_word_embeddings
    embedding_keys = {"model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}
    if tie_word_embeddings:  # the same report as the library's own Marian gives
        assert reports["ours"] == reports["marian"] == embedding_keys | {"lm_head.weight"}
    else:  # the untied output layer was saved; Marian unties its encoder and decoder embeddings here, we do not
        assert reports["ours"] == embedding_keys


def test_an_unexpected_weight_is_reported(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["model.encoder.layers.0.extra.weight"] = torch.zeros(3)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = VaswaniForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == {"model.encoder.layers.0.extra.weight"}
    assert not info["missing_keys"]
    assert torch.equal(loaded.model.shared.weight, model.model.shared.weight)


# ---------------------------------------------------------------------------------------------------------------
# 3. The causal LM: the library's signature and loss, and the family's encoder-decoder config
# ---------------------------------------------------------------------------------------------------------------


def test_the_causal_lm_builds_from_an_encoder_decoder_config_taking_the_decoder_settings():
    config = tiny_config(encoder_layers=1, decoder_layers=3, decoder_attention_heads=2, decoder_ffn_dim=48)
    model = VaswaniForCausalLM(config)
    assert config.is_encoder_decoder and config.encoder_layers == 1  # the caller's config is left as it was
    assert not model.config.is_encoder_decoder and len(model.model.layers) == 3
    assert (model.config.num_hidden_layers, model.config.num_attention_heads) == (3, 2)  # what the cache reads
    assert model.model.layers[0].fc1.out_features == 48 and model.model.layers[0].encoder_attn is None
    assert type(AutoModelForCausalLM.from_config(config)) is VaswaniForCausalLM


def test_shift_labels_and_num_items_in_batch_reach_the_library_loss():
    model = varied_causal_lm()
    ids = torch.randint(4, 101, (2, 9))
    labels = ids.clone()
    labels[1, :3] = -100
    with torch.no_grad():
        from_labels = model(input_ids=ids, labels=labels)
        shifted = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)  # as context-parallel training passes
        from_shifted = model(input_ids=ids, shift_labels=shifted)
        summed = model(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(4))
    torch.testing.assert_close(from_shifted.loss, from_labels.loss)
    tokens = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(summed.loss, from_labels.loss * tokens / 4)  # a sum over the tokens, divided by 4


def test_logits_to_keep_computes_the_output_layer_for_the_last_positions_only():
    model = varied_causal_lm()
    ids = torch.randint(4, 101, (2, 9))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        last = model(input_ids=ids, logits_to_keep=1).logits
        picked = model(input_ids=ids, logits_to_keep=torch.tensor([2, 5])).logits
    assert last.shape == (2, 1, 101) and picked.shape == (2, 2, 101)
    torch.testing.assert_close(last, full[:, -1:])
    torch.testing.assert_close(picked, full[:, [2, 5]])


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_a_left_padded_batch_generates_what_each_prompt_generates_alone(positions):
    """generate() derives position_ids from the attention mask: a left-padded prompt keeps its absolute positions."""
    model = varied_causal_lm(position_embedding_type=positions)
    prompts = [[1, 17, 42, 5, 9, 33], [1, 8, 71]]
    width = max(map(len, prompts))
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batched = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
        assert batched[row, width:].tolist() == alone[0, len(prompt):].tolist(), row


def test_explicit_position_ids_are_the_positions_used():
    model = varied_causal_lm()
    ids = torch.randint(4, 101, (1, 5))
    with torch.no_grad():
        shifted = model(input_ids=ids, position_ids=torch.arange(3, 8)[None]).logits
        padded = model(input_ids=torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1),
                       attention_mask=torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])).logits
    torch.testing.assert_close(shifted, padded[:, 3:], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# 4. Every public class builds from its config and round-trips alone
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", [VaswaniEncoder, VaswaniDecoder])
def test_the_stacks_build_from_the_config_and_round_trip(tmp_path, stack):
    model = tiny_model()
    part = model.get_encoder() if stack is VaswaniEncoder else model.get_decoder()
    part.save_pretrained(tmp_path)
    loaded, info = stack.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    fresh = stack(tiny_config())  # no embedding argument: the stack owns its own
    assert fresh.embed_tokens.weight.shape == (101, 32)
    input_ids, attention_mask = source_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    if stack is VaswaniDecoder:
        inputs.update(encoder_hidden_states=torch.randn(3, 9, 32), use_cache=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs).last_hidden_state, part(**inputs).last_hidden_state,
                                   atol=0, rtol=0)


def test_the_image_encoder_builds_from_the_config_and_round_trips(tmp_path):
    config = tiny_config(image_size=8, patch_size=4)
    model = VaswaniForImageCaptioning(config).eval()
    model.get_encoder().save_pretrained(tmp_path)
    loaded, info = VaswaniImageEncoder.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    assert loaded.embed_tokens is None  # it reads patches: no token embedding
    pixels = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixels).last_hidden_state,
                                   model.get_encoder()(pixels).last_hidden_state, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# 5. Hidden states and attentions come from the library's output recorder
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize_before", [False, True])
def test_hidden_states_are_the_layer_outputs_the_library_records(normalize_before):
    """The recorder hooks the layers named in `_can_record_outputs`: entry 0 is the embedding output, entry i the
    output of layer i, the last one the stack's output (after the final LayerNorm of pre-LN), as for Marian."""
    model = tiny_model(normalize_before=normalize_before)
    encoder = model.get_encoder()
    seen = []
    handles = [layer.register_forward_hook(lambda module, args, output: seen.append(output)) for layer in encoder.layers]
    input_ids, attention_mask = source_batch()
    with torch.no_grad():
        out = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                      output_attentions=True)
    for handle in handles:
        handle.remove()
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    if normalize_before:
        torch.testing.assert_close(out.hidden_states[1], seen[0])
    else:
        for recorded, layer_output in zip(out.hidden_states[1:], seen):
            torch.testing.assert_close(recorded, layer_output)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    sums = out.attentions[0].sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))  # rows of softmax weights
    assert out.attentions[0].shape == (3, 4, 9, 9)


def test_attentions_of_a_generation_are_recorded_per_step():
    model = varied_seq2seq()
    input_ids, attention_mask = source_batch()
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=1, do_sample=False,
                         max_new_tokens=4, min_new_tokens=4, output_attentions=True, return_dict_in_generate=True)
    assert len(out.decoder_attentions) == 4 and len(out.cross_attentions) == 4
    assert out.cross_attentions[1][0].shape == (3, 4, 1, 9)  # step 2: one query over the 9 source positions
    assert out.decoder_attentions[1][0].shape == (3, 4, 1, 2)  # ... over the 2 target positions so far


# ---------------------------------------------------------------------------------------------------------------
# 6. Positions: bounded loudly, never allocated up front, never run past in generate()
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [10**9, 10**7])
def test_an_absurd_max_position_embeddings_in_config_json_fails_by_name(tmp_path, value):
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["max_position_embeddings"] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"`max_position_embeddings` must be at most 1048576"):
        VaswaniForConditionalGeneration.from_pretrained(tmp_path)


def test_a_long_sinusoidal_range_allocates_no_table():
    model = VaswaniForConditionalGeneration(tiny_config(max_position_embeddings=1 << 20))
    sizes = [tensor.numel() for tensor in [*model.parameters(), *model.buffers()]]
    assert max(sizes) < 10**5  # the largest is the 101 x 32 embedding, not a 2^20 x 32 table
    position = torch.tensor([1_000_000])
    encoding = model.model.encoder.embed_positions(position)[0]
    assert encoding[2].item() == pytest.approx(math.sin(1_000_000 / 10000 ** (2 / 32)), abs=1e-6)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_generate_stops_at_the_position_table_instead_of_failing(num_beams):
    model = varied_seq2seq(max_position_embeddings=16)
    input_ids = torch.tensor([[7]])
    out = model.generate(input_ids=input_ids, max_new_tokens=40, min_new_tokens=40, num_beams=num_beams)
    assert out.shape[1] == 16  # <s> and 15 tokens: every decoder position the table has
    out = model.generate(input_ids=input_ids, max_length=40, min_new_tokens=40, num_beams=num_beams)
    assert out.shape[1] == 16


def test_the_causal_lm_stops_at_the_position_table_and_refuses_a_prompt_that_fills_it():
    model = varied_causal_lm(max_position_embeddings=16)
    prompt = torch.randint(4, 101, (1, 10))
    assert model.generate(input_ids=prompt, max_new_tokens=40, min_new_tokens=40).shape[1] == 16
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(input_ids=torch.randint(4, 101, (1, 16)), max_new_tokens=4)


def test_relative_positions_have_no_table_to_stop_at():
    model = varied_causal_lm(**VARIANTS["relative"], max_position_embeddings=16)
    out = model.generate(input_ids=torch.randint(4, 101, (1, 10)), max_new_tokens=30, min_new_tokens=30)
    assert out.shape[1] == 40


def test_configs_keep_their_checks():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        VaswaniConfig(max_position_embeddings=(1 << 20) + 1)
    assert VaswaniConfig(max_position_embeddings=1 << 20).max_position_embeddings == 1 << 20
