"""Look into a kuva archive from a test: its index rows and its blob files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from kuva.codec.part10 import canonical_file_meta
from kuva.storage import blob_key


@dataclass(frozen=True)
class Row:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str
    source_ae: str


def index_rows(database_url: str) -> dict[str, Row]:
    """Every indexed instance, by SOP Instance UID."""
    url = database_url
    if url.startswith("postgresql://"):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT sop_instance_uid, sop_class_uid, transfer_syntax_uid, blob_key, "
                    "size, sha256, source_ae FROM instance"
                )
            ).all()
    finally:
        engine.dispose()
    return {r[0]: Row(*r) for r in rows}


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file: everything after its File Meta Information."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", f"{path} is not a Part 10 file"
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


def expected_blob(path: Path, sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """What kuva must store for a sent file: canonical file meta + the data set as sent."""
    return canonical_file_meta(sop_class, sop_instance, transfer_syntax) + dataset_bytes(path)


def blob_files(blob_dir: Path) -> list[Path]:
    return sorted(p for p in (blob_dir / "sha256").rglob("*") if p.is_file())


def check_blob_integrity(blob_dir: Path) -> None:
    """Every visible blob is complete: its name is the SHA-256 of its bytes."""
    for path in blob_files(blob_dir):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert blob_key(digest) == path.relative_to(blob_dir).as_posix(), f"bad blob {path}"


def flip_byte(path: Path, offset: int = -100) -> None:
    """Corrupt a stored blob in place (blobs are read-only: make it writable first)."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
