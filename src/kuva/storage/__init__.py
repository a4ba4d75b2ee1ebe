"""Blob stores: content-addressed, write-once bytes behind one small interface."""

from kuva.storage.base import BlobExistsError, BlobRef, BlobStore, BlobWriter, blob_key

__all__ = ["BlobExistsError", "BlobRef", "BlobStore", "BlobWriter", "blob_key"]
