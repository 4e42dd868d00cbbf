"""Relative position self-attention (Shaw et al. 2018) computed with the Music Transformer's skewing trick."""

import pytest
import torch
from model_utils import source_batch, tiny_config
from variant_utils import (
    VARIANTS,
    assert_cached_generation_is_uncached_generation,
    naive_relative_logits,
    varied_causal_lm,
    varied_seq2seq,
)

from hf_transformer import VaswaniConfig, VaswaniForConditionalGeneration
from hf_transformer.attention_vaswani import VaswaniAttention, VaswaniRelativePositionEmbedding, causal_mask, skew

RELATIVE = VARIANTS["relative"]


def embedding(max_relative_position: int, per_head: bool, heads: int = 3, head_dim: int = 5):
    config = VaswaniConfig(
        vocab_size=11, d_model=heads * head_dim, encoder_attention_heads=heads, decoder_attention_heads=heads,
        max_relative_position=max_relative_position, relative_attention_per_head=per_head,
    )
    module = VaswaniRelativePositionEmbedding(config, heads, head_dim).double()
    torch.nn.init.normal_(module.weight)
    return module


# (past_length P, query_length T, key_length Lk, causal): encoder (both directions), decoder (causal), the cached
# rectangular case (queries at P..P+T-1 against keys 0..P+T-1), one generation step, a bidirectional rectangle.
CASES = [(0, 9, 9, False), (0, 9, 9, True), (6, 3, 9, True), (8, 1, 9, True), (4, 3, 10, False)]


@pytest.mark.parametrize("per_head", [True, False])
@pytest.mark.parametrize("max_relative_position", [3, 20])  # clipped at 3; 20 > every distance here
@pytest.mark.parametrize("past_length, query_length, key_length, causal", CASES)
def test_skewed_logits_equal_the_gathered_ones(past_length, query_length, key_length, causal, max_relative_position,
                                               per_head):
    module = embedding(max_relative_position, per_head)
    query = torch.randn(2, 3, query_length, 5, dtype=torch.float64)
    skewed = module(query, past_length, key_length, causal)
    query_positions = torch.arange(past_length, past_length + query_length)
    naive = naive_relative_logits(query, module.weight, query_positions, torch.arange(key_length))
    assert skewed.shape == naive.shape == (2, 3, query_length, key_length)
    keep = query_positions[:, None] >= torch.arange(key_length)[None, :] if causal else torch.ones_like(naive[0, 0]).bool()
    torch.testing.assert_close(skewed[..., keep], naive[..., keep], atol=1e-6, rtol=0)
    assert naive[..., keep].abs().max() > 1  # real numbers were compared


def test_skew_is_pad_reshape_slice_on_a_known_matrix():
    # causal 3 x 3: column c of each row holds distance c - 2; after skewing, row i lists distances j - i for j <= i
    distances = torch.tensor([-2.0, -1.0, 0.0]).expand(3, 3)
    out = skew(distances, 3)
    assert out.tolist()[0][0] == 0 and out.tolist()[1][:2] == [-1, 0] and out.tolist()[2] == [-2, -1, 0]


@pytest.mark.parametrize("causal", [False, True])
def test_relative_attention_layer_is_the_formula_of_the_music_transformer(causal):
    """softmax((Q K^T + S_rel) / sqrt(Dh)) V with S_rel gathered naively, against the layer (eager, float64)."""
    torch.manual_seed(0)
    config = tiny_config(**RELATIVE, attn_implementation="eager")
    layer = VaswaniAttention(config, 4, layer_idx=0, is_causal=causal).double().eval()
    torch.nn.init.normal_(layer.relative_position_embedding.weight)
    hidden = torch.randn(2, 11, 32, dtype=torch.float64)
    mask = causal_mask(11, 0, None, torch.float64, hidden.device) if causal else None
    output, _ = layer(hidden, mask)
    query, key, value = (layer.split_heads(proj(hidden)) for proj in (layer.q_proj, layer.k_proj, layer.v_proj))
    positions = torch.arange(11)
    logits = query @ key.transpose(-1, -2) + naive_relative_logits(
        query, layer.relative_position_embedding.weight, positions, positions)
    if causal:
        logits = logits.masked_fill(positions[None, :] > positions[:, None], float("-inf"))
    expected = torch.softmax(logits / 8**0.5, -1) @ value  # Dh = 8
    expected = layer.out_proj(expected.transpose(1, 2).reshape(2, 11, 32))
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=0)  # the eager softmax runs in float32


def test_no_absolute_positions_and_no_length_limit():
    model = varied_causal_lm(**RELATIVE, max_position_embeddings=8)
    assert model.model.embed_positions is None
    assert not any("embed_positions" in name for name, _ in model.named_parameters())
    layer = model.model.layers[0]
    assert layer.self_attn.relative_position_embedding.weight.shape == (4, 13, 8)  # (H, 2K + 1, Dh)
    out = model.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert out.shape == (1, 23)  # longer than max_position_embeddings: nothing limits relative positions
    shared = varied_seq2seq(**RELATIVE, relative_attention_per_head=False)
    attn = shared.model.decoder.layers[0]
    assert attn.self_attn.relative_position_embedding.weight.shape == (1, 13, 8)
    assert attn.encoder_attn.relative_position_embedding is None  # cross-attention stays content-only


def test_left_padding_changes_nothing_with_relative_positions():
    """Distances between real tokens do not depend on how many pads precede them."""
    model = varied_causal_lm(**RELATIVE)
    ids = torch.tensor([[9, 10, 11, 12, 13]])
    alone = model(input_ids=ids).logits[:, -1]
    padded_ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    padded_mask = (padded_ids != 0).long()
    padded = model(input_ids=padded_ids, attention_mask=padded_mask).logits[:, -1]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_cached_and_uncached_generation_are_identical():
    input_ids, attention_mask = source_batch()
    seq2seq = varied_seq2seq(**RELATIVE)
    assert_cached_generation_is_uncached_generation(seq2seq, input_ids=input_ids, attention_mask=attention_mask)
    lm = varied_causal_lm(**RELATIVE)
    assert_cached_generation_is_uncached_generation(lm, input_ids=input_ids[:, :4])


def test_eager_and_sdpa_agree():
    input_ids, attention_mask = source_batch()
    decoder_input_ids = torch.randint(4, 101, (3, 7))
    model = varied_seq2seq(**RELATIVE)
    logits = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            logits[implementation] = model(input_ids=input_ids, attention_mask=attention_mask,
                                           decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=0)
    lm = varied_causal_lm(**RELATIVE)
    for implementation in ("eager", "sdpa"):
        lm.set_attn_implementation(implementation)
        with torch.no_grad():
            logits[implementation] = lm(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=0)


def test_relative_model_trains():
    """The relative tables receive gradients (they are used) and one Adam step lowers the loss."""
    model = VaswaniForConditionalGeneration(tiny_config(**RELATIVE)).train()
    input_ids, attention_mask = source_batch()
    labels = input_ids.flip(1).masked_fill(attention_mask.flip(1) == 0, -100)
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    tables = [p for n, p in model.named_parameters() if "relative_position_embedding" in n]
    assert len(tables) == 2 * 2  # encoder self + decoder self, two layers each
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tables)
