"""Blob stores: content-addressed, write-once bytes behind one small interface."""

from kuva.storage.base import (
    BlobCopy,
    BlobEntry,
    BlobExistsError,
    BlobRef,
    BlobStore,
    BlobWriter,
    CopyWriter,
    blob_key,
)

__all__ = [
    "BlobCopy",
    "BlobEntry",
    "BlobExistsError",
    "BlobRef",
    "BlobStore",
    "BlobWriter",
    "CopyWriter",
    "blob_key",
]
