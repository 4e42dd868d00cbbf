"""Checksums of exported folders: `checksums.sha256` lists the sha256 of every file of the folder, in the format of
`sha256sum` (so `cd folder && sha256sum -c checksums.sha256` checks it too). The project's loaders check it before
they load a folder (`verify_manifest`); `from_pretrained` ignores the file, so a folder loads without it as before.

A flipped byte inside tensor data loads as a different weight (safetensors and torch checkpoints carry no checksum
of their data); the manifest turns it into an error naming the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MANIFEST = "checksums.sha256"
CHUNK = 1 << 20


class ChecksumMismatchError(OSError):
    """A file that differs from the checksum recorded when it was written."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_text(folder: str | os.PathLike) -> str:
    """`<sha256>  <relative path>` for every file under `folder` (the manifest itself and hidden files left out),
    sorted by path."""
    folder = Path(folder)
    lines = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and relative.as_posix() != MANIFEST and not relative.name.startswith("."):
            lines.append(f"{file_sha256(path)}  {relative.as_posix()}\n")
    return "".join(lines)


def write_manifest(folder: str | os.PathLike) -> Path:
    """Write `folder/checksums.sha256` (through a temporary file and a rename); its path."""
    folder = Path(folder)
    target = folder / MANIFEST
    partial = folder / f".{MANIFEST}.tmp-{os.getpid()}"
    partial.write_text(manifest_text(folder), encoding="utf-8")
    os.replace(partial, target)
    return target


def read_manifest(path: str | os.PathLike) -> dict[str, list[str]]:
    """relative path -> the checksums a manifest lists for it (a checkpoint's may list two while it is replaced)."""
    listed: dict[str, list[str]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        checksum, separator, name = line.partition("  ")
        if separator and len(checksum) == 64:
            listed.setdefault(name, []).append(checksum)
    return listed


def verify_manifest(folder: str | os.PathLike) -> bool:
    """Check every file a folder's `checksums.sha256` lists; False when the folder has no manifest.

    Raises:
        ChecksumMismatchError: a listed file is missing or its sha256 differs, naming it and the fix.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    for name, checksums in read_manifest(manifest).items():
        path = folder / name
        actual = file_sha256(path) if path.is_file() else None
        if actual not in checksums:
            found = "is missing" if actual is None else f"has sha256 {actual[:16]}..."
            raise ChecksumMismatchError(
                f"The folder {str(folder)!r} is damaged: {name} {found}, but {MANIFEST} recorded "
                f"{checksums[0][:16]}... when it was written (a disk or copy error, or an edit). Export or copy the "
                f"folder again from its source; `sha256sum -c {MANIFEST}` in the folder lists every file that differs.")
    return True


__all__ = ["MANIFEST", "ChecksumMismatchError", "file_sha256", "manifest_text", "read_manifest", "verify_manifest",
           "write_manifest"]
