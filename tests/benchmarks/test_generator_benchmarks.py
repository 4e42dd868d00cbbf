"""The chorale and pixel benchmarks: the layer-memory measurement (fast), and both scripts end to end in their quick
modes (slow: they train through the recipes)."""

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import pixels


def test_local_layers_grow_linearly_and_full_attention_quadratically():
    """Peak memory of one causal layer of the pixel recipe's width as the picture side doubles (4x the positions):
    about 4x for both local forms, about 16x for full attention."""
    rows = {(row["attention_type"], row["image_size"]): row["peak_bytes"]
            for row in (pixels.layer_memory(kind, size, True) for kind in pixels.VARIANTS for size in (16, 32))}
    for kind in ("local", "local_2d"):
        assert 3.0 < rows[(kind, 32)] / rows[(kind, 16)] < 5.0, kind
    assert rows[("full", 32)] / rows[("full", 16)] > 10.0
    assert rows[("local_2d", 32)] < rows[("full", 32)] / 4 and rows[("local", 32)] < rows[("full", 32)] / 4
    analytic = pixels.layer_memory("full", 64, False)
    assert analytic["analytic"] and analytic["peak_bytes"] == 2 * 4 * (64 * 64 * 3 + 1) ** 2 * 4


@pytest.mark.slow
def test_the_pixel_benchmark_trains_three_variants_and_writes_its_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TRANSFORMER_CACHE", str(tmp_path / "cache"))  # the pictures are written there
    output = tmp_path / "pixels.json"
    report = pixels.main(["--quick", "--threads", "1", "--workdir", str(tmp_path / "runs"), "--docs",
                          str(tmp_path / "docs"), "--output", str(output)])
    assert json.loads(output.read_text()) == report
    assert [row["attention_type"] for row in report["results"]] == ["local", "local_2d", "full"]
    for row in report["results"]:  # 20 steps: well below the uniform 8 bits of a random model, above the floor
        assert report["floor"]["bits_per_dim_floor"] < row["test_bits_per_dim"] < 7.5
    grid = np.asarray(Image.open(tmp_path / "docs" / "pixels_samples.png"))
    assert grid.shape == (4 * (16 * 4 + 2) + 2, 8 * (16 * 4 + 2) + 2, 3)  # 4 rows of 8 pictures of 16 x 16, x4


@pytest.mark.slow
def test_the_chorale_benchmark_scores_both_recipes_and_writes_midi(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TRANSFORMER_CACHE", str(tmp_path / "cache"))  # the corpus is parsed into it (a minute)
    pytest.importorskip("music21", reason="music21 is part of the test extra: pip install -e '.[test]'")
    import music21

    from benchmarks import chorales

    output = tmp_path / "chorales.json"
    report = chorales.main(["--quick", "--threads", "1", "--samples", "1", "--workdir", str(tmp_path / "runs"),
                            "--docs", str(tmp_path / "docs"), "--output", str(output)])
    assert json.loads(output.read_text()) == report
    rows = {row["position_embedding_type"]: row for row in report["results"]}
    assert set(rows) == {"relative", "sinusoidal"}
    for row in rows.values():  # 30 steps: below the uniform log(133) = 4.9 nats
        assert 0 < row["validation_nll"] < 4.9 and 0 < row["test_nll"] < 4.9
        assert row["validation_tokens"] == 34320 and row["test_tokens"] == 37376  # every held-out token, once
    midi = music21.converter.parse(str(tmp_path / "docs" / "chorale_continuation_1.mid"))
    assert len(midi.parts) == 4 and midi.highestTime >= 2 * 256 / 4 / 4  # 2 x the training length, in quarters
    assert (tmp_path / "docs" / "chorale_continuations.png").is_file()
