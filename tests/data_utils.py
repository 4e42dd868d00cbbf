"""Real text for tests: the Multi30k corpus in ../shared/data/multi30k (see DESIGN.md)."""

import gzip
from itertools import islice
from pathlib import Path

import pytest

MULTI30K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"


def multi30k_lines(name: str, limit: int | None = None) -> list[str]:
    """The first `limit` lines of e.g. "train.de.gz"; fails (never skips) with a clear message when missing."""
    path = MULTI30K / name
    if not path.is_file():
        pytest.fail(
            f"these tests need the Multi30k corpus in ../shared/data/multi30k next to the repository "
            f"(missing: {path})"
        )
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in islice(handle, limit)]
