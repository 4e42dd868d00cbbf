"""The lean decoding loop of generate() (hf_transformer/generation_vaswani.py): token for token the library's beam and
greedy search (and Marian's on the same weights), for every model configuration and batch size; used exactly when the
request is plain; int8 quantization of the linear layers. Speed is measured by benchmarks/decode.py, never here.

The models are tiny and trained for a few seconds on the reverse task (tests/model_utils.py), so that hypotheses end
with </s> at varied lengths, sentences of a batch finish at different steps (and leave the lean loop's batch) and
beam search often disagrees with greedy search."""

import copy
import functools
from unittest import mock

import pytest
import torch
from model_utils import reverse_task_batch, tiny_caption_config, tiny_model, train_reverse_model
from transformers import GenerationConfig

from benchmarks import common
from hf_transformer import VaswaniForCausalLM, VaswaniForImageCaptioning, generation_vaswani
from hf_transformer.quantization import quantize_int8

STRATEGIES = {
    "beam4": dict(num_beams=4, length_penalty=0.6, early_stopping=True),  # §6.1, the models' default
    "greedy": dict(num_beams=1),
    "beam4_heuristic": dict(num_beams=4, length_penalty=1.0, early_stopping=False),
    "beam3_never_long": dict(num_beams=3, length_penalty=1.5, early_stopping="never"),
    "beam2_short": dict(num_beams=2, length_penalty=0.0, early_stopping=True),
}
VARIANTS = {  # configurations whose decoder runs other code in the loop: positions, wiring, attention variants
    "learned_pre_ln": dict(position_embedding_type="learned", normalize_before=True),
    "relative": dict(position_embedding_type="relative", max_relative_position=4),
    "local": dict(attention_type="local", local_block_length=3, local_memory_length=2),
    "untied_unscaled": dict(tie_word_embeddings=False, scale_embedding=False),
}


@functools.cache
def reverse_model(**overrides):
    return train_reverse_model(80, seed=0, **overrides)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread (as the benchmarks), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def both_loops(model, input_ids, attention_mask, **settings) -> tuple[torch.Tensor, torch.Tensor]:
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12, **settings)
    return (model.generate(decoding_loop="lean", **kwargs), model.generate(decoding_loop="library", **kwargs))


def lengths(sequences: torch.Tensor, eos: int) -> set[int]:
    ends = sequences == eos
    return set(torch.where(ends.any(-1), ends.float().argmax(-1) + 1, sequences.shape[1]).tolist())


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_lean_loop_gives_the_library_tokens(strategy, batch):
    """Batches of 1 and 3 keep fewer than MIN_ROWS rows at times (first step, finished sentences); 16 lets finished
    sentences leave the batch while others decode on."""
    model = reverse_model()
    input_ids, attention_mask, _ = reverse_task_batch(torch.Generator().manual_seed(batch), batch, max_length=10)
    lean, library = both_loops(model, input_ids, attention_mask, **STRATEGIES[strategy])
    assert torch.equal(lean, library)
    if batch == 16:  # what makes the comparison worth something: outputs end with </s>, at many lengths
        assert len(lengths(library, model.config.eos_token_id)) >= 4


@pytest.mark.parametrize("strategy", ["beam4", "greedy"])
def test_lean_loop_gives_marians_tokens_on_the_same_weights(strategy):
    model = copy.deepcopy(reverse_model())
    model.set_attn_implementation("sdpa")
    marian = common.marian_twin(model).eval()
    input_ids, attention_mask, _ = reverse_task_batch(torch.Generator().manual_seed(11), 16, max_length=10)
    settings = dict(max_new_tokens=12, do_sample=False, **STRATEGIES[strategy])
    ours = model.generate(input_ids=input_ids, attention_mask=attention_mask, decoding_loop="lean", **settings)
    theirs = marian.generate(input_ids=input_ids, attention_mask=attention_mask, decoder_start_token_id=1, **settings)
    assert torch.equal(ours, theirs)


def test_lean_loop_on_many_inputs():
    """Exactness rests on the same operations in the same order, except where the loop shapes the work differently
    (cross-attention over the beams of a sentence at once, one row per sentence at the first step, fewer rows once
    sentences finish): 480 sentences in batches of 1 to 32, beam 4 and greedy, each token equal."""
    model = reverse_model()
    generator = torch.Generator().manual_seed(2024)
    compared = 0
    for batch in (1, 2, 4, 5, 8, 13, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 4):
        input_ids, attention_mask, _ = reverse_task_batch(generator, batch, max_length=12)
        for strategy in ("beam4", "greedy"):
            lean, library = both_loops(model, input_ids, attention_mask, **STRATEGIES[strategy])
            assert torch.equal(lean, library), (batch, strategy)
        compared += batch
    assert compared >= 480


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_lean_loop_runs_every_variant_like_the_library(variant, attn_implementation):
    model = copy.deepcopy(reverse_model(**VARIANTS[variant]))
    model.set_attn_implementation(attn_implementation)
    input_ids, attention_mask, _ = reverse_task_batch(torch.Generator().manual_seed(3), 8, max_length=10)
    for strategy in ("beam4", "greedy"):
        lean, library = both_loops(model, input_ids, attention_mask, **STRATEGIES[strategy])
        assert torch.equal(lean, library), strategy


def test_lean_loop_decodes_captions_like_the_library():
    torch.manual_seed(0)
    model = VaswaniForImageCaptioning(tiny_caption_config()).eval()
    pixel_values = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for strategy in ("beam4", "greedy"):
        settings = dict(pixel_values=pixel_values, max_new_tokens=10, **STRATEGIES[strategy])
        assert torch.equal(model.generate(decoding_loop="lean", **settings),
                           model.generate(decoding_loop="library", **settings))


def test_bf16_autocast_decodes_through_the_lean_loop():
    """The GPU setting (bf16 autocast) on CPU: the loop's cache takes the dtype of the projections."""
    model = reverse_model()
    input_ids, attention_mask, _ = reverse_task_batch(torch.Generator().manual_seed(4), 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lean, library = both_loops(model, input_ids, attention_mask, **STRATEGIES["beam4"])
    assert lean.shape[0] == 6 and lean[:, 0].eq(model.config.decoder_start_token_id).all()
    assert (lean == library).all(-1).sum() >= 4  # bf16 rounding may part a near-tie; most sentences agree


# ----------------------------------------------------------------------------------------------------------------
# Which loop decodes
# ----------------------------------------------------------------------------------------------------------------


def decodes_with_lean_loop(model, **kwargs) -> bool:
    with mock.patch("hf_transformer.modeling_vaswani.lean_decode", wraps=generation_vaswani.lean_decode) as spy:
        model.generate(**kwargs)
    return spy.called


def test_plain_requests_take_the_lean_loop_and_others_the_librarys():
    model = reverse_model()
    input_ids, attention_mask, _ = reverse_task_batch(torch.Generator().manual_seed(5), 3)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6)
    assert decodes_with_lean_loop(model, **inputs)  # the model's generation config: beam 4, alpha 0.6
    assert decodes_with_lean_loop(model, **inputs, num_beams=1, use_cache=True, do_sample=False)
    assert decodes_with_lean_loop(model, **inputs, generation_config=GenerationConfig(num_beams=2, max_length=9))
    for settings in (dict(num_return_sequences=2), dict(repetition_penalty=1.2), dict(output_scores=True,
                     return_dict_in_generate=True), dict(do_sample=True), dict(use_cache=False),
                     dict(no_repeat_ngram_size=2), dict(decoding_loop="library")):
        assert not decodes_with_lean_loop(model, **inputs, **settings), settings
    assert not decodes_with_lean_loop(model, **inputs, decoder_input_ids=torch.ones(3, 2, dtype=torch.long))
    altered = copy.deepcopy(model)
    altered.generation_config.no_repeat_ngram_size = 3  # the model's own settings count too
    assert not decodes_with_lean_loop(altered, **inputs)
    assert not decodes_with_lean_loop(copy.deepcopy(model).train(), **inputs)  # dropout: the library's loop
    hooked = copy.deepcopy(model)  # the loop goes past the layers' forward: hooks there (FSDP's, yours) would not run
    calls = []
    hooked.model.decoder.layers[1].self_attn.register_forward_hook(lambda *_: calls.append(1))
    assert not decodes_with_lean_loop(hooked, **inputs) and calls


def test_decoder_only_model_uses_the_librarys_loop():
    model = VaswaniForCausalLM(tiny_model().config).eval()
    prompt = torch.tensor([[5, 6, 7]])
    assert not decodes_with_lean_loop(model, input_ids=prompt, max_new_tokens=4)
    with pytest.raises(ValueError, match="decoder-only"):
        model.generate(input_ids=prompt, max_new_tokens=4, decoding_loop="lean")


def test_decoding_loop_is_checked():
    model = reverse_model()
    input_ids, attention_mask, _ = reverse_task_batch(torch.Generator().manual_seed(6), 2)
    with pytest.raises(ValueError, match=r"`decoding_loop` must be one of \['auto', 'lean', 'library'\]"):
        model.generate(input_ids=input_ids, decoding_loop="fast")
    with pytest.raises(ValueError, match=r"repetition_penalty=1\.3 \(in the call\).*decoding_loop='auto'"):
        model.generate(input_ids=input_ids, attention_mask=attention_mask, repetition_penalty=1.3,
                       decoding_loop="lean")


# ----------------------------------------------------------------------------------------------------------------
# int8
# ----------------------------------------------------------------------------------------------------------------


def test_quantize_int8_copies_the_model_and_quantizes_its_linear_layers():
    model = reverse_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    quantized = quantize_int8(model)
    assert type(model.lm_head) is torch.nn.Linear and all(torch.equal(before[n], t)
                                                          for n, t in model.state_dict().items())
    linear = [module for module in quantized.modules() if type(module) is torch.nn.Linear]
    assert not linear  # every projection, the FFN and the output layer are int8 now
    assert "quantized" in type(quantized.lm_head).__module__ and "quantized" in type(
        quantized.model.decoder.layers[0].self_attn.q_proj).__module__
    input_ids, attention_mask, _ = reverse_task_batch(torch.Generator().manual_seed(8), 32)
    settings = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12)
    int8, float32 = quantized.generate(**settings), model.generate(**settings)
    same = (int8 == float32).all(-1).sum() if int8.shape == float32.shape else 0
    assert same >= 16  # a half-trained model: int8 rounding changes some outputs, most stay


def test_quantize_int8_refuses_a_model_off_the_cpu():
    model = reverse_model()
    with mock.patch.object(torch.Tensor, "device", new_callable=mock.PropertyMock,
                           return_value=torch.device("meta")):
        with pytest.raises(ValueError, match="runs on CPU"):
            quantize_int8(model)


# ----------------------------------------------------------------------------------------------------------------
# Projections through transposed weights
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 16, 64, 65])
@pytest.mark.parametrize("shape", [(8, 16), (12, 64), (16, 8), (32, 32), (101, 32), (256, 256), (512, 2048),
                                   (2048, 512), (8000, 256)])
def test_projection_through_transposed_weights_gives_the_modules_bits(rows, shape):
    """The lean loop's exactness on CPU rests on this: x @ (W^T copy) equals nn.Linear's x W^T bit for bit from
    MIN_ROWS rows and MIN_FEATURES outputs up (MKL uses other kernels below; `project` then calls the module)."""
    generator = torch.Generator().manual_seed(rows)
    out_features, in_features = shape
    for bias in (True, False):
        linear = torch.nn.Linear(in_features, out_features, bias=bias)
        states = torch.randn(rows, 1, in_features, generator=generator)
        assert torch.equal(generation_vaswani.TransposedWeights().project(linear, states), linear(states)), bias


@pytest.mark.parametrize("fused", [True, False])
def test_weights_trained_between_two_calls_decode_with_their_new_values(fused):
    """Validation during training: generate(), optimiser steps, generate() again. torch's fused Adam (the recipes'
    default) updates the weights in place without bumping their version counter, so no transposed copy may outlive a
    call: the second call must decode with the new weights, as the library's loop does."""
    model = copy.deepcopy(reverse_model())  # trained below: not the shared cached model
    generator = torch.Generator().manual_seed(5)
    input_ids, attention_mask, labels = reverse_task_batch(generator, 16)
    lean, library = both_loops(model, input_ids, attention_mask, num_beams=1)
    assert torch.equal(lean, library)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    model.train()
    for _ in range(2):
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    lean_after, library_after = both_loops(model, input_ids, attention_mask, num_beams=1)
    assert not torch.equal(library_after, library)  # the steps changed what the model decodes
    assert torch.equal(lean_after, library_after)
