"""Bach chorales from music21's corpus, serialised as in the Music Transformer's JSB Chorales experiment (Huang et al.
2018, §4.1 there: the score as a matrix of voices x 16th-note steps, read in raster order, voice by voice within a
step), and `ChoralesDataModule`, which trains `VaswaniForCausalLM` on them.

Serialisation (`chorale_grid`, `serialise`):
- the four voices Soprano, Alto, Tenor, Bass: the parts whose name starts with that word (the four parts in score
  order when a score has exactly four unnamed parts); scores with other voicings (five voices, piano) are left out;
- a grid of 16th notes (4 steps per quarter note) from the score's first offset to its end; at each step, each voice's
  sounding MIDI pitch, or a rest; the four voices interleaved S A T B, so step t is tokens 4t .. 4t + 3 and the
  voice of a token is its position modulo 4.
- Where the paper leaves room, our choices: a held note repeats its pitch at every step (no separate "hold" or
  "onset" symbol: the grid of pitches the paper serialises); a note shorter than a 16th that covers no grid point is
  dropped (a handful of ornaments); a rest is its own symbol; a chord inside one voice (none in this corpus) keeps its
  highest pitch; pieces are not transposed (no augmentation) nor normalised to one key.
- Vocabulary (`CHORALE_SYMBOLS`): after the special tokens (ids 0-3), `rest` (id 4) and the MIDI pitches 0-127 as
  their numbers (ids 5-132): 133 tokens. An example is `<s>` + the tokens of consecutive steps.

Split (`CHORALE_SPLIT`, `chorales_split.json` beside this file): fixed and published, by piece. A piece is a file name
without its version suffix (`bwv248.64-6` and `bwv248.64-s` are two versions of `bwv248.64`): all versions of a
piece are in one split. A score whose serialisation equals an earlier one's (the same harmonisation under two catalogue
numbers) is left out. The pieces are shuffled with seed 0 and cut 80 / 10 / 10 % (`write_split` wrote the file with
music21 10.5.1; it lists every piece, and what was left out and why).

`music21` is an optional dependency (`pip install -e ".[music]"`), imported only here, only when chorales are read
or written as MIDI. Parsing the 400-odd scores takes about a minute on one core, once: the serialised corpus is cached
as a dataset folder (`cache_dir/jsb_chorales-*`, parquet, columns `piece`, `pitches`: the interleaved pitches, -1 for a
rest) that `datasets.load_dataset` reads.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import Dataset

from ..runs import cache_dir as user_cache_dir
from .corpus import check_int
from .fixed_vocabulary import FIRST_SYMBOL_ID, FixedVocabularyDataModule

logger = logging.getLogger(__name__)

VOICES = ("Soprano", "Alto", "Tenor", "Bass")
STEPS_PER_QUARTER = 4  # a 16th-note grid
REST = -1  # a rest in the pitch grid
CHORALE_SYMBOLS = ["rest"] + [str(pitch) for pitch in range(128)]
REST_ID = FIRST_SYMBOL_ID  # 4
FIRST_PITCH_ID = FIRST_SYMBOL_ID + 1  # 5: MIDI pitch p is id 5 + p
CHORALE_SPLIT = Path(__file__).with_name("chorales_split.json")
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
CORPUS_FORMAT_VERSION = 1  # bump when the serialisation changes: the cached corpus folder is named by it


def import_music21():
    """music21, or an ImportError that says how to install it."""
    try:
        import music21
    except ImportError as error:
        raise ImportError('the chorales need music21: pip install -e ".[music]" (or pip install music21)') from error
    return music21


# ----------------------------------------------------------------------------------------------------------------
# Scores <-> pitch grids <-> token ids
# ----------------------------------------------------------------------------------------------------------------


def voice_parts(score: Any) -> list[Any]:
    """The Soprano, Alto, Tenor and Bass parts of a music21 score, in that order; ValueError when it has no such four
    (five voices, a piano reduction)."""
    parts = list(score.parts)
    found = []
    for voice in VOICES:
        matches = [part for part in parts if (part.partName or "").split()[:1] == [voice]]
        if len(matches) != 1:
            break
        found.append(matches[0])
    if len(found) == len(VOICES):
        return found
    if len(parts) == len(VOICES) and not any(part.partName for part in parts):
        return parts  # four unnamed parts: in score order, top to bottom
    raise ValueError(f"not a four-voice SATB score: its parts are {[part.partName for part in parts]}")


def chorale_grid(score: Any) -> np.ndarray:
    """The (steps, 4) MIDI pitches of the SATB voices on the 16th-note grid (REST where a voice is silent)."""
    music21 = import_music21()
    parts = voice_parts(score)
    start = min(float(part.flatten().lowestOffset) for part in parts)
    steps = int(np.ceil((float(score.highestTime) - start) * STEPS_PER_QUARTER - 1e-6))
    grid = np.full((steps, len(VOICES)), REST, dtype=np.int16)
    for voice, part in enumerate(parts):
        for element in part.flatten().notes:
            length = float(element.duration.quarterLength)
            if length <= 0:  # grace notes take no time
                continue
            pitches = element.pitches if isinstance(element, music21.chord.Chord) else [element.pitch]
            onset = (float(element.offset) - start) * STEPS_PER_QUARTER
            first, end = int(np.ceil(onset - 1e-6)), int(np.ceil(onset + length * STEPS_PER_QUARTER - 1e-6))
            grid[first:end, voice] = max(pitch.midi for pitch in pitches)  # the grid points the note covers
    return grid


def serialise(grid: np.ndarray) -> np.ndarray:
    """(steps, 4) pitches -> (4 steps,) token ids: the voices interleaved S A T B at each step."""
    flat = grid.reshape(-1).astype(np.int64)
    return np.where(flat == REST, REST_ID, flat + FIRST_PITCH_ID)


def deserialise(ids: np.ndarray | list[int] | torch.Tensor) -> np.ndarray:
    """Token ids -> (steps, 4) pitches. Special tokens become rests; a trailing partial step is dropped."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    ids = ids[: ids.size // len(VOICES) * len(VOICES)]
    pitches = np.where(ids >= FIRST_PITCH_ID, ids - FIRST_PITCH_ID, REST)
    return pitches.reshape(-1, len(VOICES)).astype(np.int16)


def grid_to_score(grid: np.ndarray, title: str = "") -> Any:
    """A music21 score of four parts (S, A, T, B) from a pitch grid. Consecutive equal pitches in a voice become one
    held note: the grid does not say whether a note is held or repeated, and held reads better."""
    music21 = import_music21()
    score = music21.stream.Score()
    score.insert(0, music21.metadata.Metadata(title=title))
    for voice, name in enumerate(VOICES):
        part = music21.stream.Part(id=name)
        part.partName = name
        column = grid[:, voice]
        step = 0
        while step < len(column):
            end = step + 1
            while end < len(column) and column[end] == column[step]:
                end += 1
            length = (end - step) / STEPS_PER_QUARTER
            element = (music21.note.Rest(quarterLength=length) if column[step] == REST
                       else music21.note.Note(int(column[step]), quarterLength=length))
            part.insert(step / STEPS_PER_QUARTER, element)
            step = end
        score.insert(0, part)
    return score


def write_midi(grid: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """The grid as a standard MIDI file (four tracks, S A T B)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_to_score(grid, title).write("midi", fp=str(path))
    return path


VOICE_COLOURS = ((200, 40, 40), (40, 150, 60), (50, 90, 220), (220, 140, 20))  # S, A, T, B


def write_piano_roll(grids: list[np.ndarray], path: str | os.PathLike, prompt_steps: int = 0,
                     titles: list[str] | None = None, step_width: int = 2, semitone_height: int = 3) -> Path:
    """Piano rolls of pitch grids, one band per grid, stacked: time to the right (a thin line every 4/4 bar), pitch up,
    one colour per voice (S red, A green, T blue, B orange); the first `prompt_steps` steps (the given opening) on
    grey, what follows on white. Written as PNG."""
    from PIL import Image, ImageDraw

    sounding = np.concatenate([grid[grid != REST] for grid in grids] or [np.array([60])])
    low, high = int(sounding.min()) - 2, int(sounding.max()) + 2
    steps = max(len(grid) for grid in grids)
    title_height, band = 14, (high - low + 1) * semitone_height
    width, height = steps * step_width + 2, len(grids) * (band + title_height + 6)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for index, grid in enumerate(grids):
        top = index * (band + title_height + 6) + title_height
        draw.text((2, top - title_height + 1), (titles or [""] * len(grids))[index], fill="black")
        draw.rectangle([0, top, prompt_steps * step_width, top + band], fill=(225, 225, 225))
        for bar in range(0, steps + 1, 4 * STEPS_PER_QUARTER):
            draw.line([bar * step_width, top, bar * step_width, top + band], fill=(200, 200, 200))
        for voice, colour in enumerate(VOICE_COLOURS):
            for step, pitch in enumerate(grid[:, voice]):
                if pitch != REST:
                    y = top + (high - int(pitch)) * semitone_height
                    draw.rectangle([step * step_width, y, (step + 1) * step_width - 1, y + semitone_height - 1],
                                   fill=colour)
        draw.line([prompt_steps * step_width, top, prompt_steps * step_width, top + band], fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# The corpus and its fixed split
# ----------------------------------------------------------------------------------------------------------------


def piece_of(name: str) -> str:
    """The piece a corpus file (named without its extension) belongs to: the name without its version suffix
    (`bwv248.64-6` -> `bwv248.64`)."""
    return re.sub(r"-[^.]*$", "", name)


def corpus_chorales() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every Bach score of music21's corpus (.mxl, .xml, .krn files) as a pitch grid, by file name (without
    extension); and the files left out, with the reason."""
    music21 = import_music21()
    grids, left_out = {}, {}
    for path in sorted(music21.corpus.getComposer("bach"), key=lambda p: p.name):
        if path.suffix not in (".mxl", ".xml", ".krn"):
            continue
        name = path.name.rsplit(".", 1)[0]
        try:
            grids[name] = chorale_grid(music21.corpus.parse(path))
        except ValueError as error:
            left_out[name] = str(error)
    return grids, left_out


def write_split(path: str | os.PathLike = CHORALE_SPLIT, seed: int = 0) -> dict[str, Any]:
    """Make the fixed split from the installed music21's corpus and write it as JSON (see the module docstring)."""
    music21 = import_music21()
    grids, left_out = corpus_chorales()
    first_of: dict[bytes, str] = {}
    pieces: dict[str, list[str]] = {}
    for name, grid in grids.items():
        key = grid.tobytes()
        if key in first_of:
            left_out[name] = f"the same serialisation as {first_of[key]}"
            continue
        first_of[key] = name
        pieces.setdefault(piece_of(name), []).append(name)
    order = sorted(pieces)
    random.Random(seed).shuffle(order)
    cut_validation = round(SPLIT_FRACTIONS["train"] * len(order))
    cut_test = cut_validation + round(SPLIT_FRACTIONS["validation"] * len(order))
    groups = {"train": order[:cut_validation], "validation": order[cut_validation:cut_test], "test": order[cut_test:]}
    split = {
        "source": f"music21 {music21.__version__} corpus, composer 'bach' (.mxl, .xml, .krn files)",
        "rule": f"pieces (file names without version suffix) shuffled with random.Random({seed}), cut "
                f"{SPLIT_FRACTIONS}; files with the serialisation of an earlier file left out",
        **{role: sorted(name for piece in group for name in pieces[piece]) for role, group in groups.items()},
        "left_out": dict(sorted(left_out.items())),
    }
    Path(path).write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
    return split


def read_split(path: str | os.PathLike = CHORALE_SPLIT) -> dict[str, list[str]]:
    """The file names of each split ("train", "validation", "test")."""
    split = json.loads(Path(path).read_text(encoding="utf-8"))
    return {role: split[role] for role in SPLIT_FRACTIONS}


def write_chorales_dataset(folder: str | os.PathLike, split_file: str | os.PathLike = CHORALE_SPLIT) -> Path:
    """The serialised chorales of the split as a dataset folder (README.md `configs:` + data/<split>-*.parquet,
    columns `piece`, `pitches`); kept if already there. Every piece the split names must be in the installed corpus."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # DDP ranks started together: one writes, the others wait and read
        if (folder / "README.md").is_file():
            return folder
        split = read_split(split_file)
        grids, _ = corpus_chorales()
        missing = sorted(name for names in split.values() for name in names if name not in grids)
        if missing:
            raise ValueError(f"the chorale split {str(split_file)!r} names pieces this music21's corpus does not have "
                             f"(or cannot serialise): {missing[:10]}{' ...' if len(missing) > 10 else ''}; the split "
                             "was made with the music21 release it names")
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        (partial / "data").mkdir(parents=True, exist_ok=True)
        features = datasets.Features({"piece": datasets.Value("string"),
                                      "pitches": datasets.List(datasets.Value("int16"))})
        for role, names in split.items():
            rows = {"piece": names, "pitches": [grids[name].reshape(-1).tolist() for name in names]}
            datasets.Dataset.from_dict(rows, features=features).to_parquet(
                str(partial / "data" / f"{role}-00000-of-00001.parquet"))
        entries = "".join(f"  - split: {role}\n    path: data/{role}-*.parquet\n" for role in split)
        (partial / "README.md").write_text(
            f"---\nconfigs:\n- config_name: default\n  data_files:\n{entries}---\nBach chorales from music21's corpus "
            "on a 16th-note grid, voices interleaved S A T B (lightning_modules/data/music.py).\n", encoding="utf-8")
        os.replace(partial, folder)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# The data module
# ----------------------------------------------------------------------------------------------------------------


class TokenWindows(Dataset):
    """Windows of pieces as examples: `<s>` + the ids of `pieces[p][start:end]`, for (p, start, end) in `windows`."""

    def __init__(self, pieces: list[np.ndarray], windows: list[tuple[int, int, int]], bos_token_id: int) -> None:
        self.pieces = pieces
        self.windows = windows
        self.bos_token_id = bos_token_id

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        piece, start, end = self.windows[index]
        return {"input_ids": np.concatenate([[self.bos_token_id], self.pieces[piece][start:end]]), "id": index}


def piece_windows(lengths: list[int], length: int, stride: int) -> list[tuple[int, int, int]]:
    """(piece, start, end) windows of at most `length` tokens every `stride` tokens in each piece, the last one
    reaching its end (a piece shorter than `length` is one window). With stride == length every token is in exactly
    one window."""
    windows = []
    for piece, size in enumerate(lengths):
        starts = list(range(0, max(size - length, 0) + 1, stride))
        if starts[-1] + length < size:
            starts.append(starts[-1] + stride)  # the rest of the piece, shorter than length
        windows.extend((piece, start, min(start + length, size)) for start in starts)
    return windows


class ChoralesDataModule(FixedVocabularyDataModule):
    """Bach chorales (music21's corpus, the fixed split of `chorales_split.json`) for `VaswaniForCausalLM`; see the
    module docstring for the serialisation.

    Args:
        sequence_length: Music tokens per training example (a multiple of 4: whole 16th-note steps; the example is
            `<s>` + these tokens).
        stride: Training windows start every `stride` tokens of a piece (a multiple of 4). Validation and test cut
            each held-out piece into consecutive windows of `sequence_length` tokens, so that every token is scored
            exactly once, each window from its own `<s>`.
        split_file: The split (default: the published one beside this file).
        batch_size: Windows per training batch.
        eval_batch_size: Windows per validation/test batch.
        cache_dir: Where the serialised corpus and the tokenizer are cached; None: the per-user cache
            (`$HF_TRANSFORMER_CACHE`, else `~/.cache/hf-transformer`).
        tokenizer_path: The fixed vocabulary's folder (what a checkpoint brings); None: written to the cache.
        num_workers: DataLoader worker processes.
        seed: Seed of the batch order.
    """

    tokenizer_kind = "chorales"

    def __init__(
        self,
        sequence_length: int = 256,
        stride: int = 32,
        split_file: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        cache_dir: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
        tokenizer_path: str | None = None,
    ) -> None:
        for name, value in (("sequence_length", sequence_length), ("stride", stride)):
            check_int(name, value, len(VOICES))
            if value % len(VOICES):
                raise ValueError(f"{name} must be a multiple of {len(VOICES)} (whole 16th-note steps of the four "
                                 f"voices), got {value}")
        self.split_file = Path(split_file) if split_file is not None else CHORALE_SPLIT
        if not self.split_file.is_file():
            raise FileNotFoundError(f"split_file {str(self.split_file)!r} does not exist")
        root = Path(cache_dir) if cache_dir is not None else user_cache_dir()
        folder = root / f"jsb_chorales-v{CORPUS_FORMAT_VERSION}-{self.split_file.stem}"
        super().__init__(str(folder), None, None, {role: role for role in SPLIT_FRACTIONS}, CHORALE_SYMBOLS,
                         batch_size, eval_batch_size, cache_dir, num_workers, seed, tokenizer_path)
        self.sequence_length = sequence_length
        self.stride = stride

    @property
    def dataset_name(self) -> str:
        return "Bach chorales (music21 corpus), 16th-note grid, SATB interleaved"

    def data_identity(self, split: str) -> dict[str, Any]:
        return {"dataset": self.dataset, "split_file": self.split_file.read_text(encoding="utf-8")}

    def check_rows(self, raw: datasets.Dataset, split: str) -> None:
        if "pitches" not in raw.column_names:
            raise ValueError(f"{self.where(split)} has no column 'pitches': {self.dataset!r} is not a chorale folder "
                             "written by write_chorales_dataset; delete it to have it written again")

    def pieces(self, role: str) -> tuple[list[str], list[np.ndarray]]:
        """The names and token ids of the pieces of `role`."""
        write_chorales_dataset(self.dataset, self.split_file)  # on first use, not when a recipe is only built
        raw = self.load_split(self.splits[role])
        pitches = [np.asarray(row, dtype=np.int64) for row in raw["pitches"]]
        return list(raw["piece"]), [serialise(row.reshape(-1, len(VOICES))) for row in pitches]

    def build_examples(self, role: str) -> tuple[Dataset, np.ndarray]:
        _, pieces = self.pieces(role)
        stride = self.stride if role == "train" else self.sequence_length
        windows = piece_windows([len(piece) for piece in pieces], self.sequence_length, stride)
        if self.is_global_zero():
            logger.info("%s: %d chorales, %d tokens, %d windows of up to %d tokens", role, len(pieces),
                        sum(len(piece) for piece in pieces), len(windows), self.sequence_length)
        lengths = np.asarray([end - start + 1 for _, start, end in windows], dtype=np.int64)  # + <s>
        return TokenWindows(pieces, windows, self.bos_token_id), lengths


def main() -> None:
    """`python -m lightning_modules.data.music`: write the split file again from the installed music21 (it is
    published with the code; only a maintainer re-making it runs this)."""
    split = write_split()
    print({role: len(split[role]) for role in SPLIT_FRACTIONS}, "left out:", len(split["left_out"]))


__all__ = ["ChoralesDataModule", "CHORALE_SYMBOLS", "VOICES", "chorale_grid", "serialise", "deserialise",
           "write_midi", "write_piano_roll", "grid_to_score", "read_split", "write_split", "write_chorales_dataset",
           "piece_windows"]

if __name__ == "__main__":
    main()
