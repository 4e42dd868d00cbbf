"""Plain-text corpus files, framework-free: open (`.gz`/`.bz2`/`.xz` too), check, count and read aligned lines.

A parallel corpus in plain text is two files aligned by line number, one sentence per line. Only "\\n" ends a line
(so a stray "\\r" or a Unicode line separator inside a sentence cannot shift the alignment), a "\\r" before it is
dropped, and a UTF-8 byte order mark at the start of a file (Windows editors write one) is not part of the first
sentence. Errors name the file, and for invalid UTF-8 the line, the byte offset and the bytes.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def open_text(path: str | os.PathLike) -> IO[str]:
    """A UTF-8 text file for reading, decompressed by its suffix; only "\\n" ends a line, a leading BOM is dropped."""
    return OPENERS.get(Path(path).suffix.lower(), open)(path, "rt", encoding="utf-8-sig", newline="\n")


def count_lines(path: str | os.PathLike) -> int:
    """Number of lines of a (possibly compressed) text file, a last line without "\\n" included."""
    count, last = 0, b"\n"
    with OPENERS.get(Path(path).suffix.lower(), open)(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def scan_text_file(path: str | os.PathLike, role: str = "file") -> int:
    """Number of lines of a (possibly compressed) text file, after checking that it decompresses and is UTF-8.

    Raises a ValueError naming `role` and the file instead of the `UnicodeDecodeError` / `BadGzipFile` / `EOFError`
    that would otherwise surface mid-way through tokenization without a file name.
    """
    opener = OPENERS.get(Path(path).suffix.lower(), open)
    lines, offset, pending, last = 0, 0, b"", b"\n"
    try:
        with opener(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                data = pending + chunk
                try:
                    _, consumed = codecs.utf_8_decode(data, "strict", False)  # stops before an incomplete tail
                except UnicodeDecodeError as error:
                    line = lines + data[: error.start].count(b"\n") + 1
                    raise ValueError(
                        f"{role} {str(path)!r} is not valid UTF-8: line {line} (byte {offset + error.start}) holds "
                        f"{data[error.start:error.end + 8]!r}. Convert the file to UTF-8 (e.g. `iconv -f latin1 "
                        f"-t utf-8`) or remove that line (from both files, for a pair of aligned files)"
                    ) from None
                lines += chunk.count(b"\n")
                offset += consumed
                pending, last = data[consumed:], chunk[-1:]
    except (OSError, EOFError, lzma.LZMAError) as error:  # BadGzipFile is an OSError; truncated gzip an EOFError
        raise ValueError(
            f"{role} {str(path)!r} cannot be read as a {Path(path).suffix or 'plain text'} file "
            f"({type(error).__name__}: {error}); is it truncated, or compressed differently than its name says?"
        ) from error
    if pending:
        raise ValueError(
            f"{role} {str(path)!r} is not valid UTF-8: it ends in the middle of a character ({pending!r} at byte "
            f"{offset}); was it truncated?"
        )
    if lines == 0 and offset == len(codecs.BOM_UTF8):
        with opener(path, "rb") as handle:
            if handle.read() == codecs.BOM_UTF8:
                return 0  # a byte order mark alone: no line, as the reader (utf-8-sig) sees it
    return lines + (last != b"\n")


def read_lines(path: str | os.PathLike) -> list[str]:
    """All lines of a (possibly compressed) UTF-8 text file, without their line endings."""
    with open_text(path) as handle:
        return [line.rstrip("\n").removesuffix("\r") for line in handle]


def check_aligned(source_path: str, target_path: str, where: str) -> int:
    """The number of sentence pairs of two aligned files; a ValueError (prefixed by `where`) if they are not
    readable UTF-8, not aligned, or empty."""
    source_count = scan_text_file(source_path, f"{where}: source file")
    target_count = scan_text_file(target_path, f"{where}: target file")
    if source_count != target_count:
        raise ValueError(
            f"{where}: the plain-text files are not aligned: {source_path!r} has {source_count} lines but "
            f"{target_path!r} has {target_count}; they must hold one sentence pair per line"
        )
    if source_count == 0:
        raise ValueError(f"{where}: {source_path!r} and {target_path!r} are empty (0 lines)")
    return source_count


def read_text_pair(source_path: str, target_path: str, source_lang: str, target_lang: str,
                   stamp: str = "") -> Iterator[dict[str, str]]:
    """`{source_lang: line, target_lang: line}` from two aligned files (`stamp` only fingerprints them for
    `datasets.Dataset.from_generator`)."""
    del stamp
    with open_text(source_path) as source, open_text(target_path) as target:
        for source_line, target_line in zip(source, target, strict=True):
            yield {source_lang: source_line.rstrip("\n").removesuffix("\r"),
                   target_lang: target_line.rstrip("\n").removesuffix("\r")}


__all__ = ["open_text", "count_lines", "scan_text_file", "read_lines", "check_aligned", "read_text_pair"]
