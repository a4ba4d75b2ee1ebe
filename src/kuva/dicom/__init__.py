"""The DICOM adapters on kuva's own engine (kuva.dicom.net): the SCPs and SCUs; the
codecs they and the services share (Part 10, KOS, transcoding) are kuva.codec."""
