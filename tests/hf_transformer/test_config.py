"""VaswaniConfig: the paper's sizes, HF conventions, and a clear ValueError for every bad value."""

import pytest
from transformers import AutoConfig

from hf_transformer import VaswaniConfig


def test_defaults_are_the_base_model_of_table_3():
    config = VaswaniConfig()
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (512, 6, 6)
    assert (config.encoder_ffn_dim, config.encoder_attention_heads, config.dropout) == (2048, 8, 0.1)
    assert config.activation_function == "relu" and config.scale_embedding and not config.normalize_before
    assert config.position_embedding_type == "sinusoidal" and config.tie_word_embeddings
    assert config.model_type == "vaswani" and config.is_encoder_decoder and config.use_cache


def test_base_and_big():
    base, big = VaswaniConfig.base(vocab_size=32000), VaswaniConfig.big(vocab_size=32000)
    assert base.vocab_size == big.vocab_size == 32000
    assert (big.d_model, big.encoder_ffn_dim, big.decoder_attention_heads, big.dropout) == (1024, 4096, 16, 0.3)
    assert VaswaniConfig.big(vocab_size=100, dropout=0.1).dropout == 0.1  # overrides win


def test_hf_attribute_aliases_and_round_trip(tmp_path):
    config = VaswaniConfig(vocab_size=1000, d_model=64, encoder_attention_heads=4, decoder_attention_heads=4)
    assert config.hidden_size == 64 and config.num_attention_heads == 4 and config.num_hidden_layers == 6
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, VaswaniConfig)
    assert loaded.to_dict() == {**config.to_dict(), "_name_or_path": str(tmp_path)}
    assert loaded.auto_map["AutoModelForSeq2SeqLM"] == "modeling_vaswani.VaswaniForConditionalGeneration"


BAD_VALUES = [
    ("d_model", 100, "divisible by `encoder_attention_heads`"),  # 100 % 8 != 0
    ("decoder_attention_heads", 7, "divisible by `decoder_attention_heads`"),
    ("vocab_size", 0, "positive integer"),
    ("d_model", -512, "positive integer"),
    ("encoder_layers", 0, "positive integer"),
    ("decoder_layers", 2.5, "positive integer"),
    ("encoder_attention_heads", 0, "positive integer"),
    ("encoder_ffn_dim", 0, "positive integer"),
    ("decoder_ffn_dim", "2048", "positive integer"),
    ("max_position_embeddings", 0, "positive integer"),
    ("dropout", 1.0, "probability"),
    ("attention_dropout", -0.1, "probability"),
    ("activation_dropout", 2, "probability"),
    ("activation_function", "relu6", "one of"),
    ("position_embedding_type", "rotary", "one of"),
    ("attention_type", "block", "one of"),
    ("max_relative_position", 0, "positive integer"),
    ("local_block_length", 0, "positive integer"),
    ("local_memory_length", -1, "integer >= 0"),
    ("relative_attention_per_head", "no", "True or False"),
    ("scale_embedding", "yes", "True or False"),
    ("normalize_before", 1, "True or False"),
    ("tie_word_embeddings", None, "True or False"),
    ("init_std", 0.0, "positive float"),
    ("pad_token_id", 37000, "token id"),
    ("pad_token_id", None, "required"),
    ("bos_token_id", -1, "token id"),
    ("eos_token_id", 40000, "token id"),
    ("decoder_start_token_id", 37000, "token id"),
    ("decoder_start_token_id", None, "required"),
]


@pytest.mark.parametrize("field, value, message", BAD_VALUES, ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_every_bad_value_is_a_value_error_naming_the_field(field, value, message):
    with pytest.raises(ValueError) as error:
        VaswaniConfig(**{field: value})
    text = str(error.value)
    assert f"`{field}`" in text and message in text
    if value is not None:  # the offending value is quoted back
        assert repr(value) in text


def test_enum_errors_list_the_allowed_values():
    with pytest.raises(ValueError, match=r"\['sinusoidal', 'learned', 'relative'\]"):
        VaswaniConfig(position_embedding_type="absolute")
    with pytest.raises(ValueError,
                       match=r"`attention_type` must be one of \['full', 'local', 'local_2d'\], got 'sparse'"):
        VaswaniConfig(attention_type="sparse")
    with pytest.raises(ValueError, match=r"Allowed head counts for d_model=100: \[1, 2, 4, 5, 10, 20, 25, 50\]"):
        VaswaniConfig(d_model=100, encoder_attention_heads=8)


def test_a_bad_saved_config_fails_on_load(tmp_path):
    import json

    VaswaniConfig(vocab_size=100).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    values = json.loads(path.read_text())
    values["d_model"] = 30
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match="d_model"):
        AutoConfig.from_pretrained(tmp_path)
