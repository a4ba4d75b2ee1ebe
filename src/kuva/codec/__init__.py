"""DICOM codecs: bytes and data sets in, bytes and data sets out, no network.

Part 10 files as kuva stores them (PS3.10), XDS-I.b manifests (Key Object Selection
Documents, PS3.3 A.35.4), transfer syntax conversion (PS3.5), outgoing objects and
bulk data. A codec imports pydicom, numpy, the standard library, ``kuva.model`` and
the ``kuva.storage`` interfaces only: services and adapters import codecs, never
the other way round (tests/unit/test_layering.py).
"""
