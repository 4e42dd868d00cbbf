"""Bach chorales as the Music Transformer serialises them (lightning_modules/data/music.py): the 16th-note grid, the
S A T B interleaving, MIDI and piano-roll output, the published split, and the data module's batches. Needs music21
(the `music` extra; the `test` extra installs it)."""

import json

import numpy as np
import pytest
import torch

music21 = pytest.importorskip("music21", reason="music21 is part of the test extra: pip install -e '.[test]'")

from lightning_modules.data.music import (  # noqa: E402
    CHORALE_SPLIT,
    REST,
    ChoralesDataModule,
    chorale_grid,
    deserialise,
    grid_to_score,
    piece_of,
    piece_windows,
    read_split,
    serialise,
    write_midi,
    write_piano_roll,
)


def four_voices(parts: dict[str, list[tuple[int | None, float]]]) -> "music21.stream.Score":
    """A score with one part per voice name, each a list of (MIDI pitch or None for a rest, quarter length)."""
    score = music21.stream.Score()
    for name, notes in parts.items():
        part = music21.stream.Part()
        part.partName = name
        for pitch, length in notes:
            part.append(music21.note.Rest(quarterLength=length) if pitch is None
                        else music21.note.Note(pitch, quarterLength=length))
        score.insert(0, part)
    return score


SMALL = {  # one 2/4 bar: 8 steps of 16th notes
    "Soprano": [(72, 1.0), (74, 0.5), (None, 0.25), (76, 0.25)],
    "Alto": [(67, 2.0)],
    "Tenor": [(64, 0.75), (62, 0.25), (60, 1.0)],
    "Bass": [(48, 1.5), (43, 0.5)],
}


def test_the_grid_holds_each_voice_at_every_16th_note():
    grid = chorale_grid(four_voices(SMALL))
    assert grid.shape == (8, 4)
    assert grid[:, 0].tolist() == [72, 72, 72, 72, 74, 74, REST, 76]  # held notes repeat, a rest is its own symbol
    assert grid[:, 1].tolist() == [67] * 8
    assert grid[:, 2].tolist() == [64, 64, 64, 62, 60, 60, 60, 60]
    assert grid[:, 3].tolist() == [48] * 6 + [43] * 2


def test_voices_are_interleaved_soprano_first_at_every_step():
    grid = chorale_grid(four_voices(SMALL))
    ids = serialise(grid)
    assert ids.shape == (32,)
    assert ids[:8].tolist() == [5 + 72, 5 + 67, 5 + 64, 5 + 48] * 2  # step 0 then step 1: S A T B
    assert ids[4 * 6] == 4  # the soprano's rest at step 6 is the `rest` token
    assert np.array_equal(deserialise(ids), grid)
    assert np.array_equal(deserialise(np.concatenate([ids, [77, 1]])), grid)  # a trailing partial step is dropped


def test_parts_are_found_by_name_whatever_their_order_and_other_scores_are_refused():
    reordered = four_voices({name: SMALL[name] for name in ("Bass", "Tenor", "Soprano", "Alto")})
    assert np.array_equal(chorale_grid(reordered), chorale_grid(four_voices(SMALL)))
    five = four_voices({**SMALL, "Continuo": [(36, 2.0)], "Soprano 2": [(70, 2.0)]})
    five.parts[0].partName = "Soprano 1"
    with pytest.raises(ValueError, match="not a four-voice SATB score"):
        chorale_grid(five)


def test_a_grid_survives_the_score_and_midi_round_trips(tmp_path):
    grid = chorale_grid(four_voices(SMALL))
    assert np.array_equal(chorale_grid(grid_to_score(grid)), grid)
    path = write_midi(grid, tmp_path / "small.mid", title="small")
    parsed = music21.converter.parse(str(path))
    for part, name in zip(parsed.parts, ("Soprano", "Alto", "Tenor", "Bass")):
        part.partName = name  # MIDI keeps track names loosely: name them for the comparison
    back = chorale_grid(parsed)
    assert np.array_equal(back[: len(grid)], grid) and (back[len(grid):] == REST).all()  # music21 fills the 4/4 bar


def test_the_piano_roll_shows_the_prompt_and_the_four_voices(tmp_path):
    from PIL import Image

    grid = chorale_grid(four_voices(SMALL))
    path = write_piano_roll([grid, grid[:4]], tmp_path / "roll.png", prompt_steps=2, titles=["a", "b"])
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] == 8 * 2 + 2  # 8 steps of 2 pixels
    colours = {tuple(pixel) for pixel in image.reshape(-1, 3)}
    for colour in ((200, 40, 40), (40, 150, 60), (50, 90, 220), (220, 140, 20), (225, 225, 225)):
        assert colour in colours  # four voices and the grey prompt


def test_the_published_split_is_by_piece_and_matches_the_installed_corpus():
    split = read_split()
    names = {role: set(files) for role, files in split.items()}
    assert {role: len(files) for role, files in names.items()} == {"train": 323, "validation": 41, "test": 40}
    pieces = {role: {piece_of(name) for name in files} for role, files in names.items()}
    assert not pieces["train"] & pieces["validation"] and not pieces["train"] & pieces["test"]
    assert not pieces["validation"] & pieces["test"]  # every version of a piece in one split
    assert piece_of("bwv248.64-6") == piece_of("bwv248.64-s") == "bwv248.64"
    corpus = {path.name.rsplit(".", 1)[0] for path in music21.corpus.getComposer("bach")}
    assert set().union(*names.values()) <= corpus
    left_out = json.loads(CHORALE_SPLIT.read_text())["left_out"]
    assert "five-voice" not in left_out["bwv227.3"] and "SATB" in left_out["bwv227.3"]  # with its reason
    assert not set(left_out) & set().union(*names.values())


def test_windows_cover_every_token_once_for_evaluation():
    windows = piece_windows([10, 3, 8], length=4, stride=4)
    assert windows == [(0, 0, 4), (0, 4, 8), (0, 8, 10), (1, 0, 3), (2, 0, 4), (2, 4, 8)]
    training = piece_windows([10], length=4, stride=2)
    assert training == [(0, 0, 4), (0, 2, 6), (0, 4, 8), (0, 6, 10)]


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """A split of four short chorales of the corpus (parsed in a second or two)."""
    folder = tmp_path_factory.mktemp("chorales")
    split = {"train": ["bwv1.6", "bwv10.7"], "validation": ["bwv101.7"], "test": ["bwv102.7"], "left_out": {}}
    (folder / "split.json").write_text(json.dumps(split))
    return folder


def test_the_data_module_batches_windows_from_the_start_token(small_split, monkeypatch):
    import lightning_modules.data.music as music

    parsed = {name: chorale_grid(music21.corpus.parse(name)) for name in ("bwv1.6", "bwv10.7", "bwv101.7",
                                                                          "bwv102.7")}
    monkeypatch.setattr(music, "corpus_chorales", lambda: (parsed, {}))  # the four pieces only: no full parse
    datamodule = ChoralesDataModule(sequence_length=64, stride=16, split_file=str(small_split / "split.json"),
                                    batch_size=4, eval_batch_size=8, cache_dir=str(small_split / "cache"))
    assert datamodule.tokenizer_fields == {"vocab_size": 133, "pad_token_id": 0, "bos_token_id": 1,
                                           "eos_token_id": 2, "decoder_start_token_id": 1}
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape == (4, 65) and (batch["input_ids"][:, 0] == 1).all()
    assert (batch["input_ids"][:, 1:] >= 4).all() and (batch["labels"] == batch["input_ids"]).all()
    names, pieces = datamodule.pieces("validation")
    assert names == ["bwv101.7"] and np.array_equal(pieces[0], serialise(parsed["bwv101.7"]))
    scored = sum(int((batch["labels"][:, 1:] != -100).sum()) for batch in datamodule.val_dataloader())
    assert scored == len(pieces[0])  # every token of the held-out chorale scored once
    decoded = datamodule.tokenizer.decode(batch["input_ids"][0, :5])
    assert decoded.split()[0] == "<s>" and all(word.isdigit() or word == "rest" for word in decoded.split()[1:])


def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="sequence_length must be a multiple of 4"):
        ChoralesDataModule(sequence_length=250, cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="split_file"):
        ChoralesDataModule(split_file=str(tmp_path / "nowhere.json"), cache_dir=str(tmp_path))


def test_a_split_naming_pieces_the_corpus_lacks_is_refused(tmp_path, monkeypatch):
    import lightning_modules.data.music as music

    (tmp_path / "split.json").write_text(json.dumps({"train": ["bwv9999.9"], "validation": [], "test": []}))
    monkeypatch.setattr(music, "corpus_chorales", lambda: ({}, {}))
    with pytest.raises(ValueError, match="bwv9999.9"):
        music.write_chorales_dataset(tmp_path / "corpus", tmp_path / "split.json")
    assert not (tmp_path / "corpus").exists()


def test_generated_ids_decode_to_a_grid_even_with_special_tokens():
    ids = torch.tensor([5 + 60, 5 + 64, 4, 2, 5 + 67, 0, 5 + 55, 5 + 48])
    assert deserialise(ids).tolist() == [[60, 64, REST, REST], [67, REST, 55, 48]]
