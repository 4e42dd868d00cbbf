"""The model against the paper and against two references: torch.nn's Transformer layers and HF Marian."""

import math

import pytest
import torch
from benchmarks.common import marian_twin
from model_utils import source_batch, tiny_config, tiny_model
from torch import nn

from hf_transformer import VaswaniConfig, VaswaniForConditionalGeneration, shift_tokens_right
from hf_transformer.attention_vaswani import padding_mask
from hf_transformer.modeling_vaswani import VaswaniDecoderLayer, VaswaniEncoderLayer, sinusoidal_table

# ---------------------------------------------------------------------------------------------------------------
# Parity with torch.nn.TransformerEncoderLayer / TransformerDecoderLayer (post-LN and pre-LN, relu)
# ---------------------------------------------------------------------------------------------------------------


def copy_attention(ours, theirs: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)


def copy_linear_norm(pairs) -> None:
    with torch.no_grad():
        for ours, theirs in pairs:
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)


def randomise(module: nn.Module, seed: int) -> None:
    """Random LayerNorm gains and biases too, so that a swapped norm cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


@pytest.mark.parametrize("normalize_before", [False, True])
def test_encoder_layer_matches_torch(normalize_before):
    config = tiny_config(normalize_before=normalize_before)
    ours = VaswaniEncoderLayer(config, 0).eval()
    randomise(ours, 0)
    theirs = nn.TransformerEncoderLayer(
        config.d_model, config.encoder_attention_heads, config.encoder_ffn_dim, dropout=0.0,
        activation="relu", batch_first=True, norm_first=normalize_before,
    ).eval()
    copy_attention(ours.self_attn, theirs.self_attn)
    copy_linear_norm([(ours.fc1, theirs.linear1), (ours.fc2, theirs.linear2),
                      (ours.self_attn_layer_norm, theirs.norm1), (ours.final_layer_norm, theirs.norm2)])

    x = torch.randn(3, 9, config.d_model)
    _, mask = source_batch()
    with torch.no_grad():
        expected = theirs(x, src_key_padding_mask=mask == 0)
        actual = ours(x, padding_mask(mask, x.dtype))
    real = mask.bool()
    torch.testing.assert_close(actual[real], expected[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("normalize_before", [False, True])
def test_decoder_layer_matches_torch(normalize_before):
    config = tiny_config(normalize_before=normalize_before)
    ours = VaswaniDecoderLayer(config, 0).eval()
    randomise(ours, 1)
    theirs = nn.TransformerDecoderLayer(
        config.d_model, config.decoder_attention_heads, config.decoder_ffn_dim, dropout=0.0,
        activation="relu", batch_first=True, norm_first=normalize_before,
    ).eval()
    copy_attention(ours.self_attn, theirs.self_attn)
    copy_attention(ours.encoder_attn, theirs.multihead_attn)
    copy_linear_norm([(ours.fc1, theirs.linear1), (ours.fc2, theirs.linear2),
                      (ours.self_attn_layer_norm, theirs.norm1), (ours.encoder_attn_layer_norm, theirs.norm2),
                      (ours.final_layer_norm, theirs.norm3)])

    target = torch.randn(3, 6, config.d_model)
    memory = torch.randn(3, 9, config.d_model)
    _, memory_mask = source_batch()
    with torch.no_grad():
        expected = theirs(target, memory, tgt_mask=nn.Transformer.generate_square_subsequent_mask(6),
                          tgt_is_causal=True, memory_key_padding_mask=memory_mask == 0)
        actual = ours(target, None, memory, padding_mask(memory_mask, target.dtype))  # no mask: causal
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Parity with HF MarianMTModel of the same configuration (weights and positional table copied)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_whole_model_matches_marian(attn_implementation):
    model = tiny_model(seed=3, attn_implementation=attn_implementation)
    marian = marian_twin(model)
    input_ids, attention_mask = source_batch(batch=3, length=11)
    labels = torch.randint(4, 101, (3, 8))
    labels[2, 5:] = -100
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        theirs = marian(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# The paper's semantics
# ---------------------------------------------------------------------------------------------------------------


def test_sinusoids_are_interleaved_as_in_section_3_5():
    table = sinusoidal_table(50, 16)
    pos, i = 37, 3
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert torch.equal(table[0, 0::2], torch.zeros(8)) and torch.equal(table[0, 1::2], torch.ones(8))


def test_embeddings_scaled_by_sqrt_d_model_plus_positions():
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7]])
    encoder = model.get_encoder()
    expected = model.model.shared(ids) * math.sqrt(32) + sinusoidal_table(64, 32)[:3]
    torch.testing.assert_close(encoder.embed(encoder.embed_tokens(ids), 0, None, "source"), expected)


def test_three_way_tying_and_untied_output_layer():
    model = tiny_model()
    shared = model.model.shared.weight
    assert model.lm_head.weight is shared
    assert model.model.encoder.embed_tokens.weight is shared and model.model.decoder.embed_tokens.weight is shared
    untied = tiny_model(tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.model.shared.weight
    assert untied.model.encoder.embed_tokens.weight is untied.model.decoder.embed_tokens.weight


def test_labels_are_shifted_right_and_minus_100_ignored():
    model = tiny_model()
    input_ids, attention_mask = source_batch()
    labels = torch.tensor([[7, 8, 9, 2], [10, 11, 2, -100], [12, 2, -100, -100]])
    decoder_input_ids = shift_tokens_right(labels, 0, 1)
    assert decoder_input_ids.tolist() == [[1, 7, 8, 9], [1, 10, 11, 2], [1, 12, 2, 0]]
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    keep = labels != -100
    expected = nn.functional.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)


def test_causality_a_future_target_token_never_changes_earlier_outputs():
    model = tiny_model()
    input_ids, attention_mask = source_batch()
    decoder_input_ids = torch.randint(4, 101, (3, 8))
    changed = decoder_input_ids.clone()
    changed[:, 5] = (changed[:, 5] + 17) % 97 + 4
    with torch.no_grad():
        a = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        b = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=changed).logits
    assert torch.equal(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_padding_a_source_never_changes_outputs(attn_implementation):
    model = tiny_model(attn_implementation=attn_implementation)
    source = torch.tensor([[5, 9, 14, 33, 2]])
    padded = torch.cat([source, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    padded_mask = (padded != 0).long()
    decoder_input_ids = torch.tensor([[1, 40, 41, 42]])
    with torch.no_grad():
        alone = model(input_ids=source, decoder_input_ids=decoder_input_ids)
        with_pads = model(input_ids=padded, attention_mask=padded_mask, decoder_input_ids=decoder_input_ids)
    torch.testing.assert_close(with_pads.logits, alone.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_pads.encoder_last_hidden_state[:, :5], alone.encoder_last_hidden_state,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("normalize_before", [False, True])
@pytest.mark.parametrize("position_embedding_type", ["sinusoidal", "learned"])
def test_eager_and_sdpa_agree(normalize_before, position_embedding_type):
    kwargs = dict(normalize_before=normalize_before, position_embedding_type=position_embedding_type)
    eager = tiny_model(seed=5, attn_implementation="eager", **kwargs)
    sdpa = tiny_model(seed=5, attn_implementation="sdpa", **kwargs)
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    input_ids, attention_mask = source_batch()
    decoder_input_ids = torch.randint(4, 101, (3, 7))
    decoder_attention_mask = torch.ones_like(decoder_input_ids)
    decoder_attention_mask[1, 5:] = 0
    for dmask in (None, decoder_attention_mask):
        with torch.no_grad():
            a = eager(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                      decoder_attention_mask=dmask).logits
            b = sdpa(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                     decoder_attention_mask=dmask).logits
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_dropout_sits_after_embeddings_and_on_every_sublayer():
    model = tiny_model(dropout=0.1)
    dropouts = [name for name, module in model.named_modules() if isinstance(module, nn.Dropout) and module.p == 0.1]
    # one after embedding + positions per stack, one per layer for its residual branches (shared by sublayers)
    assert "model.encoder.dropout" in dropouts and "model.decoder.dropout" in dropouts
    assert {f"model.encoder.layers.{i}.dropout" for i in range(2)} <= set(dropouts)
    assert {f"model.decoder.layers.{i}.dropout" for i in range(2)} <= set(dropouts)
    model.train()
    input_ids, attention_mask = source_batch()
    labels = torch.randint(4, 101, (3, 5))
    torch.manual_seed(0)
    a = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    torch.manual_seed(1)
    b = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    assert a.item() != b.item()


# ---------------------------------------------------------------------------------------------------------------
# Sizes of Table 3
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, paper_millions", [("base", 65), ("big", 213)])
def test_parameter_counts_match_table_3(size, paper_millions):
    config = getattr(VaswaniConfig, size)(vocab_size=37000)
    with torch.device("meta"):
        model = VaswaniForConditionalGeneration(config)
    count = sum(p.numel() for p in model.parameters())  # tied matrices are counted once
    print(f"\n{size}: {count / 1e6:.1f}M parameters (paper: {paper_millions}M)")
    assert abs(count / 1e6 - paper_millions) / paper_millions < 0.03


# ---------------------------------------------------------------------------------------------------------------
# The HF contract: outputs, return_dict, gradient checkpointing, input validation
# ---------------------------------------------------------------------------------------------------------------


def test_output_attentions_hidden_states_and_tuples_like_marian():
    model = tiny_model(seed=3, attn_implementation="sdpa")
    marian = marian_twin(model)
    input_ids, attention_mask = source_batch()
    decoder_input_ids = torch.randint(4, 101, (3, 6))
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                  output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        ours = model(**kwargs)
        theirs = marian.set_attn_implementation("eager") or marian(**kwargs)
    for name in ("encoder_hidden_states", "decoder_hidden_states", "encoder_attentions", "decoder_attentions",
                 "cross_attentions"):
        assert len(getattr(ours, name)) == len(getattr(theirs, name)), name
        for a, b in zip(getattr(ours, name), getattr(theirs, name)):
            assert a.shape == b.shape, name
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    # attention rows are distributions over keys; padded keys get no weight
    assert torch.allclose(ours.cross_attentions[0].sum(-1), torch.ones(3, 4, 6), atol=1e-5)
    assert ours.cross_attentions[0][1, :, :, attention_mask[1] == 0].abs().max() == 0
    with torch.no_grad():
        plain = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                     return_dict=False)
        as_tuple, marian_tuple = model(**plain), marian(**plain)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(marian_tuple) == 3  # logits, cache, encoder output
    torch.testing.assert_close(as_tuple[0], ours.logits, atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    input_ids, attention_mask = source_batch()
    labels = torch.randint(4, 101, (3, 6))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=7).train()
        if checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.23 on
                model.activation_checkpointing_enable()
                assert model.is_activation_checkpointing
            else:
                model.gradient_checkpointing_enable()
                assert model.is_gradient_checkpointing
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=0)


def test_too_long_input_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.full((1, 65), 5), decoder_input_ids=torch.tensor([[1]]))
