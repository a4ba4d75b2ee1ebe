"""The DICOM adapters (pynetdicom): SCP handlers and SCUs; the codecs they and the
services share (Part 10, KOS, transcoding) are kuva.dicom.codec."""
