"""The anchor's form of BLEU: the Moses pipeline reproduces Multi30k's tokenized files, and the script scores and
reports a hypothesis file against its references. Figures come from real runs (RESULTS.md), never from here."""

import gzip
import json

import pytest

from benchmarks import anchor_bleu

# Lines 1, 2, 226 and 230 of test_2016_flickr.de.gz, and the same lines of Multi30k's tokenized file
# data/task1/tok/test_2016_flickr.lc.norm.tok.de (made by lowercase.perl | normalize-punctuation.perl | tokenizer.perl).
RAW = [
    "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
    "Ein Boston Terrier läuft über saftig-grünes Gras vor einem weißen Zaun.",
    'Eine Frau auf einem Boot namens "El Corazon" lässt schwarze Gewichte ins Wasser fallen.',
    'Ein Jugendlicher in einem schwarzen T-Shirt mit dem Aufdruck "Asian Pacific 2007" sitzt und spielt eine Trommel.',
]
TOKENIZED = [
    "ein mann mit einem orangefarbenen hut , der etwas anstarrt .",
    "ein boston terrier läuft über saftig-grünes gras vor einem weißen zaun .",
    "eine frau auf einem boot namens &quot; el corazon &quot; lässt schwarze gewichte ins wasser fallen .",
    "ein jugendlicher in einem schwarzen t-shirt mit dem aufdruck &quot; asian pacific 2007 &quot; sitzt und spielt "
    "eine trommel .",
]


def test_the_moses_pipeline_reproduces_multi30k_tokenized_lines():
    assert anchor_bleu.moses_form(RAW, "de") == TOKENIZED


def test_scores_of_a_perfect_and_of_a_partial_output():
    perfect = anchor_bleu.anchor_scores(RAW, RAW, "de")
    assert perfect["bleu"] == perfect["bleu_lc"] == perfect["bleu_lc_moses"] == 100.0
    # Case only: sacreBLEU counts it, both lowercased forms do not (not line 2: "ß".upper() is "SS").
    unshouted = [RAW[0], RAW[2], RAW[3]]
    shouted = anchor_bleu.anchor_scores([line.upper() for line in unshouted], unshouted, "de")
    assert shouted["bleu"] < 5.0 and shouted["bleu_lc"] == shouted["bleu_lc_moses"] == 100.0
    # One word left out: both lowercased forms drop below 100.
    partial = anchor_bleu.anchor_scores([RAW[0], RAW[1], RAW[2].replace("El Corazon", "Corazon"), RAW[3]], RAW, "de")
    assert 80.0 < partial["bleu_lc_moses"] < 100.0 and 80.0 < partial["bleu_lc"] < 100.0
    assert "tok:none" in partial["signatures"]["bleu_lc_moses"] and "case:lc" in partial["signatures"]["bleu_lc"]


def test_mismatched_or_empty_files_are_refused():
    with pytest.raises(ValueError, match="3 hypotheses against 4 references"):
        anchor_bleu.anchor_scores(RAW[:3], RAW, "de")
    with pytest.raises(ValueError, match="the hypothesis file is empty"):
        anchor_bleu.anchor_scores([], [], "de")


def test_the_script_prints_and_writes_the_report(tmp_path, capsys):
    hypotheses = tmp_path / "hf_model-test.txt"
    hypotheses.write_text("".join(f"{line}\n" for line in RAW[:2] + [RAW[2].lower(), RAW[3]]), encoding="utf-8")
    references = tmp_path / "test.de.gz"
    with gzip.open(references, "wt", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in RAW))
    output = tmp_path / "report.json"
    report = anchor_bleu.main([str(hypotheses), "--references", str(references), "--output", str(output)])
    assert json.loads(output.read_text()) == report
    assert report["language"] == "de" and report["bleu_lc_moses"] == report["bleu_lc"] == 100.0
    assert report["bleu"] < 100.0  # one line lowercased
    assert "BLEU lc (Moses)" in capsys.readouterr().out
