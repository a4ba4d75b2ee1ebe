"""The DICOM adapter (pynetdicom): SCP handlers, SCU, file format helpers."""
