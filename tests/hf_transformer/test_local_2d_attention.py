"""Local 2D block self-attention (Image Transformer, Parmar et al. 2018): query rectangles on an image grid, memory
above and beside them, causal in raster order; blocked, linear in the length."""

import pytest
import torch
from model_utils import tiny_config
from variant_utils import assert_cached_generation_is_uncached_generation, varied_causal_lm, varied_seq2seq

from hf_transformer import VaswaniConfig
from hf_transformer.attention_vaswani import VaswaniAttention, grid_windows, padding_mask
from hf_transformer.modeling_vaswani import CACHE_FIELD

# a grid of 7 positions per row (a 7-pixel-wide grey image), query blocks of 2 rows x 3 columns (the last block column
# is partial), memory 1 row above and 2 columns on each side
LOCAL_2D = dict(attention_type="local_2d", local_grid_width=7, local_block_rows=2, local_block_columns=3,
                local_memory_rows=1, local_memory_columns=2)


def window_reference(length: int, causal: bool, width: int = 7, rows: int = 2, columns: int = 3, above: int = 1,
                     side: int = 2) -> torch.Tensor:
    """The (L, L) window mask from the definition, cell by cell: query (r, c) in the block whose top-left cell is
    (R, C) sees key (r', c') when R - above <= r' <= R + rows - 1 (+ above in the encoder) and
    C - side <= c' <= C + columns - 1 + side, and in the decoder when the key does not follow the query."""
    keep = torch.zeros(length, length, dtype=torch.bool)
    for query in range(length):
        r, c = divmod(query, width)
        top, left = r - r % rows, c - c % columns
        for key in range(length):
            kr, kc = divmod(key, width)
            inside_rows = top - above <= kr <= top + rows - 1 + (0 if causal else above)
            inside_columns = left - side <= kc <= left + columns - 1 + side
            keep[query, key] = inside_rows and inside_columns and (key <= query or not causal)
    return keep


def twin_layers(causal: bool, implementation: str = "eager"):
    """The same attention weights as a local 2D layer and as a full one (float64)."""
    torch.manual_seed(0)
    overrides = {**LOCAL_2D, "attn_implementation": implementation}
    local = VaswaniAttention(tiny_config(**overrides), 4, layer_idx=0, is_causal=causal).double().eval()
    full = VaswaniAttention(tiny_config(**{**overrides, "attention_type": "full"}), 4, layer_idx=0, is_causal=causal)
    full.double().eval().load_state_dict(local.state_dict())
    return local, full


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [1, 6, 14, 30, 43])  # within one block, whole block rows, a partial last row
def test_local_2d_equals_full_attention_with_the_explicit_mask(implementation, causal, length):
    local, full = twin_layers(causal, implementation)
    hidden = torch.randn(3, length, 32, dtype=torch.float64)
    attention_mask = torch.ones(3, length, dtype=torch.long)
    attention_mask[1, max(1, length - 4):] = 0  # right padding
    attention_mask[2, : length // 2] = 0  # left padding
    attention_mask[2, -1] = 1
    keep = window_reference(length, causal) & attention_mask.bool()[:, None, None, :]  # (B, 1, L, L)
    explicit = torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, torch.finfo(torch.float64).min)
    with torch.no_grad():
        got, _ = local(hidden, padding_mask(attention_mask, torch.float64))
        expected, _ = full(hidden, explicit)
    seen = keep.any(-1)[:, 0]  # queries that see at least one real key (the rest are never used)
    torch.testing.assert_close(got[seen], expected[seen], atol=1e-6, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_weights_are_zero_outside_the_window(causal):
    """output_attentions gives (B, H, L, L) weights: positive exactly inside the window, equal to full attention's."""
    local, full = twin_layers(causal)
    hidden = torch.randn(2, 30, 32, dtype=torch.float64)
    keep = window_reference(30, causal)
    explicit = torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, torch.finfo(torch.float64).min)
    with torch.no_grad():
        got, weights = local(hidden, None, output_attentions=True)
        expected, expected_weights = full(hidden, explicit[None, None], output_attentions=True)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=0)
    assert (weights[:, :, ~keep] == 0).all() and (weights[:, :, keep] > 0).all()


def test_the_window_is_the_rectangle_above_and_beside_the_block():
    """Spelled out for one query: position 23 is row 3, column 2 of a 7-wide grid; its block covers rows 2-3 and
    columns 0-2, so it sees rows 1-3, columns 0-4, up to itself."""
    keep = window_reference(30, causal=True)
    seen = torch.nonzero(keep[23]).flatten().tolist()
    assert seen == [7, 8, 9, 10, 11, 14, 15, 16, 17, 18, 21, 22, 23]


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_cached_chunks_equal_one_pass(implementation):
    """Decoding in chunks of 1, 3, 5 and 9 tokens (queries at P..P+T-1 against the cache) gives the one-pass logits,
    also when a chunk starts inside a block row or a block."""
    model = varied_causal_lm(**LOCAL_2D, attn_implementation=implementation, max_position_embeddings=64)
    ids = torch.randint(4, 101, (2, 37))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        past, start, chunks = None, 0, []
        for size in (1, 3, 5, 1, 1, 9, 2, 15):
            out = model(input_ids=ids[:, start : start + size], cache=past, use_cache=True)
            past, start = getattr(out, CACHE_FIELD), start + size
            chunks.append(out.logits)
    torch.testing.assert_close(torch.cat(chunks, 1), expected, atol=1e-5, rtol=0)


def test_a_grid_wide_window_is_full_attention():
    """With memory covering the whole grid, 2D local attention is full attention (encoder-decoder, padded source)."""
    wide = {**LOCAL_2D, "local_memory_rows": 10, "local_memory_columns": 7}
    input_ids = torch.randint(4, 101, (2, 13))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    decoder_input_ids = torch.randint(4, 101, (2, 11))
    outputs = []
    for attention_type in ("local_2d", "full"):
        model = varied_seq2seq(**{**wide, "attention_type": attention_type})
        with torch.no_grad():
            outputs.append(model(input_ids=input_ids, attention_mask=attention_mask,
                                 decoder_input_ids=decoder_input_ids).logits)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=0)


def test_cached_and_uncached_generation_are_identical():
    lm = varied_causal_lm(**LOCAL_2D, max_position_embeddings=64)
    assert_cached_generation_is_uncached_generation(lm, input_ids=torch.randint(4, 101, (3, 4)))
    seq2seq = varied_seq2seq(**LOCAL_2D)
    input_ids = torch.randint(4, 101, (3, 9))
    assert_cached_generation_is_uncached_generation(seq2seq, input_ids=input_ids,
                                                    attention_mask=torch.ones_like(input_ids))


def test_eager_and_sdpa_agree_in_the_model():
    model = varied_causal_lm(**LOCAL_2D, max_position_embeddings=64)
    ids = torch.randint(4, 101, (2, 40))
    logits = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            logits[implementation] = model(input_ids=ids).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=0)


def test_rectangles_are_views_of_linear_size():
    """The key memory per block is (B, H, nr, nc, (h_m + h_q) (w_m + w_q + w_m), Dh): linear in L, no L x L tensor;
    cells off the grid or before position 0 are zeros (masked)."""
    config = tiny_config(**LOCAL_2D)
    states = torch.arange(1.0, 43.0).view(1, 1, 42, 1)  # positions 0..41 hold 1..42
    windows = grid_windows(states, config, first_row=0, block_rows=3, block_columns=3, below=0)
    assert windows.shape == (1, 1, 3, 3, 3 * 7, 1)
    # block row 1 (rows 2-3), block column 1 (columns 3-5): rows 1-3, columns 1-7 (column 7 is off the grid)
    rectangle = windows[0, 0, 1, 1, :, 0].view(3, 7).tolist()
    assert rectangle == [[9, 10, 11, 12, 13, 14, 0], [16, 17, 18, 19, 20, 21, 0], [23, 24, 25, 26, 27, 28, 0]]
    assert windows[0, 0, 0, 0, :7, 0].tolist() == [0] * 7  # the row above row 0 does not exist


@pytest.mark.parametrize("field, value, message", [
    ("local_grid_width", None, "required with attention_type='local_2d'"),
    ("local_grid_width", 0, "positive integer"),
    ("local_block_rows", 0, "positive integer"),
    ("local_block_columns", 1.5, "positive integer"),
    ("local_memory_rows", -1, "integer >= 0"),
    ("local_memory_columns", True, "integer >= 0"),
    ("position_embedding_type", "relative", "does not combine with attention_type='local_2d'"),
])
def test_bad_2d_fields_name_the_field(field, value, message):
    with pytest.raises(ValueError) as error:
        VaswaniConfig(**{**LOCAL_2D, field: value})
    assert f"`{field}`" in str(error.value) and message in str(error.value)
