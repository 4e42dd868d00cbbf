"""Local 1D block self-attention (Image Transformer, Parmar et al. 2018): blocked, linear in the length."""

import pytest
import torch
from model_utils import source_batch, tiny_config
from variant_utils import (
    VARIANTS,
    assert_cached_generation_is_uncached_generation,
    local_keep,
    varied_causal_lm,
    varied_seq2seq,
)

from hf_transformer.attention_vaswani import VaswaniAttention, local_windows, padding_mask
from hf_transformer.modeling_vaswani import CACHE_FIELD

LOCAL_VARIANTS = ["local", "relative+local"]


def twin_layers(variant: str, causal: bool):
    """The same attention weights as a local layer and as a full one (eager, float64)."""
    torch.manual_seed(0)
    overrides = {**VARIANTS[variant], "attn_implementation": "eager"}
    local = VaswaniAttention(tiny_config(**overrides), 4, layer_idx=0, is_causal=causal).double().eval()
    full = VaswaniAttention(tiny_config(**{**overrides, "attention_type": "full"}), 4, layer_idx=0, is_causal=causal)
    full.double().eval().load_state_dict(local.state_dict())
    if local.relative_position_embedding is not None:
        torch.nn.init.normal_(local.relative_position_embedding.weight)
        full.relative_position_embedding.weight.data.copy_(local.relative_position_embedding.weight)
    return local, full


@pytest.mark.parametrize("variant", LOCAL_VARIANTS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [1, 5, 12, 14])  # within one block, a whole number of blocks, a partial last one
def test_local_equals_full_attention_with_the_explicit_mask(variant, causal, length):
    local, full = twin_layers(variant, causal)
    hidden = torch.randn(3, length, 32, dtype=torch.float64)
    attention_mask = torch.ones(3, length, dtype=torch.long)
    attention_mask[1, max(1, length - 3):] = 0  # right padding
    attention_mask[2, : length // 2] = 0  # left padding
    attention_mask[2, -1] = 1
    keys = padding_mask(attention_mask, torch.float64)
    positions = torch.arange(length)
    keep = local_keep(positions, positions, local.block_length, local.memory_length, causal)  # (T, T)
    keep = keep & attention_mask.bool()[:, None, None, :]  # (B, 1, T, T)
    explicit = torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, torch.finfo(torch.float64).min)
    got, got_weights = local(hidden, keys, output_attentions=True)
    expected, expected_weights = full(hidden, explicit, output_attentions=True)
    real = attention_mask.bool()  # outputs at padded positions are never used
    torch.testing.assert_close(got[real], expected[real], atol=1e-6, rtol=0)
    torch.testing.assert_close(got_weights.transpose(1, 2)[real], expected_weights.transpose(1, 2)[real], atol=1e-6,
                               rtol=0)  # (B, T, H, T) at the real query positions
    if length > 8:
        assert (got_weights[0][:, ~keep[0, 0]] == 0).all() and (got_weights[0][:, keep[0, 0]] > 0).all()


@pytest.mark.parametrize("variant", LOCAL_VARIANTS)
def test_cached_chunks_equal_one_pass(variant):
    """Decoding in chunks of 1, 3 and 5 tokens (queries at P..P+T-1 against the cache) gives the one-pass logits."""
    model = varied_causal_lm(**VARIANTS[variant])
    ids = torch.randint(4, 101, (2, 17))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        past, start, chunks = None, 0, []
        for size in (1, 3, 5, 1, 1, 6):
            out = model(input_ids=ids[:, start : start + size], cache=past, use_cache=True)
            past, start = getattr(out, CACHE_FIELD), start + size
            chunks.append(out.logits)
    torch.testing.assert_close(torch.cat(chunks, 1), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", LOCAL_VARIANTS)
def test_long_windows_are_full_attention(variant):
    """With a block and memory covering the whole sequence, local attention is full attention."""
    overrides = {**VARIANTS[variant], "local_block_length": 64, "local_memory_length": 64}
    input_ids, attention_mask = source_batch()
    decoder_input_ids = torch.randint(4, 101, (3, 7))
    outputs = []
    for attention_type in ("local", "full"):
        model = varied_seq2seq(**{**overrides, "attention_type": attention_type})
        with torch.no_grad():
            outputs.append(model(input_ids=input_ids, attention_mask=attention_mask,
                                 decoder_input_ids=decoder_input_ids).logits)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", LOCAL_VARIANTS)
def test_cached_and_uncached_generation_are_identical(variant):
    input_ids, attention_mask = source_batch()
    seq2seq = varied_seq2seq(**VARIANTS[variant])
    assert_cached_generation_is_uncached_generation(seq2seq, input_ids=input_ids, attention_mask=attention_mask)
    lm = varied_causal_lm(**VARIANTS[variant])
    assert_cached_generation_is_uncached_generation(lm, input_ids=input_ids[:, :4])


@pytest.mark.parametrize("variant", LOCAL_VARIANTS)
def test_eager_and_sdpa_agree(variant):
    input_ids, attention_mask = source_batch(length=13)
    decoder_input_ids = torch.randint(4, 101, (3, 11))
    logits = {}
    for model, inputs in ((varied_seq2seq(**VARIANTS[variant]), dict(decoder_input_ids=decoder_input_ids)),
                          (varied_causal_lm(**VARIANTS[variant]), {})):
        for implementation in ("eager", "sdpa"):
            model.set_attn_implementation(implementation)
            with torch.no_grad():
                logits[implementation] = model(input_ids=input_ids, attention_mask=attention_mask, **inputs).logits
        torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=0)


def test_windows_are_views_of_linear_size():
    """The key/value memory per block is (B, H, nblocks, l_m + l_q (+ l_m), Dh): linear in L, no L x L tensor."""
    states = torch.arange(20.0).view(1, 1, 20, 1)
    windows = local_windows(states, 0, 5, 4, 3, 0)  # blocks of 4 with 3 positions of memory, causal
    assert windows.shape == (1, 1, 5, 7, 1)
    assert windows[0, 0, 2, :, 0].tolist() == [5, 6, 7, 8, 9, 10, 11]  # block 2 = positions 8..11, memory 5..7
    assert windows[0, 0, 0, :, 0].tolist() == [0, 0, 0, 0, 1, 2, 3]  # zero padding before position 0 (masked)
    both_sides = local_windows(states, 1, 2, 4, 3, 3)  # encoder: memory on both sides, starting at block 1
    assert both_sides[0, 0, 1, :, 0].tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]


@pytest.mark.slow
def test_benchmark_quick_mode_writes_its_table(tmp_path):
    """benchmarks/attention_variants.py --quick: linear vs quadratic growth shows up even at small sizes."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "attention_variants.py"
    output = tmp_path / "result.json"
    subprocess.run([sys.executable, str(script), "--quick", "--output", str(output)], check=True, timeout=600)
    result = json.loads(output.read_text())
    peak = {(row["method"], row["length"]): row["peak_bytes"] for row in result["relative"]}
    assert peak[("naive", 128)] / peak[("naive", 64)] > 3.5  # quadratic in L, with a Dh factor
    assert peak[("skewed", 128)] < peak[("naive", 128)] / 10
