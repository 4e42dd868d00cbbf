"""Real text for tests: the Multi30k corpus in ../shared/data/multi30k (see DESIGN.md)."""

from pathlib import Path

import pytest

from benchmarks import common


def multi30k_lines(name: str, limit: int | None = None) -> list[str]:
    """The first `limit` lines of e.g. "train.de.gz"; fails (never skips) with a clear message when missing."""
    try:
        return common.multi30k_lines(name, limit)
    except FileNotFoundError as error:
        pytest.fail(f"these tests need the Multi30k corpus in ../shared/data/multi30k next to the repository ({error})")


def write_hub_layout(folder: Path, tables: dict[str, dict[str, list[str]]]) -> Path:
    """A dataset folder laid out like a script-free hub repo: README.md with a `configs:` block and
    data/<split>-00000-of-00001.parquet per split. `load_dataset(folder)` reads it as it reads the hub repo."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True)
    for split, columns in tables.items():
        pq.write_table(pa.table(columns), folder / "data" / f"{split}-00000-of-00001.parquet")
    entries = "".join(f"  - split: {split}\n    path: data/{split}-*.parquet\n" for split in tables)
    (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n{entries}---\n")
    return folder


def multi30k_hub_tables(sizes: dict[str, int | None] | None = None) -> dict[str, dict[str, list[str]]]:
    """Multi30k as bentrevett/multi30k has it: splits train / validation / test (test2016 Flickr), flat en / de."""
    files = {"train": "train", "validation": "val", "test": "test_2016_flickr"}
    sizes = sizes or {}
    return {
        split: {"en": multi30k_lines(f"{name}.en.gz", sizes.get(split)),
                "de": multi30k_lines(f"{name}.de.gz", sizes.get(split))}
        for split, name in files.items()
    }
