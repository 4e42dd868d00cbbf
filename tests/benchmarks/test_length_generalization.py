"""The length-generalisation benchmark in its quick mode: a decoder-only model with relative attention trained on
sequences of L tokens keeps its loss on positions L..2L within 10% of its loss on 0..L (Music Transformer's claim)."""

import json

import pytest

from benchmarks import length_generalization


@pytest.mark.slow
def test_relative_attention_generalises_to_twice_the_training_length(tmp_path):
    output = tmp_path / "length_generalization.json"
    report = length_generalization.main(["--quick", "--output", str(output)])
    assert json.loads(output.read_text()) == report
    rows = {row["position_embedding_type"]: row for row in report["results"]}
    relative, sinusoidal = rows["relative"], rows["sinusoidal"]
    assert report["eval_length"] == 2 * report["train_length"]
    # both models learned something: well below the uniform log(vocab) ~ 6.9 nats on the positions they saw
    assert relative["loss_positions_0_to_L"] < 5.5 and sinusoidal["loss_positions_0_to_L"] < 5.5
    assert relative["loss_positions_L_to_2L"] <= 1.10 * relative["loss_positions_0_to_L"]
    assert relative["within_10_percent"]
    # positions never seen in training hurt the sinusoidal model more than the relative one
    assert sinusoidal["ratio"] > relative["ratio"]
