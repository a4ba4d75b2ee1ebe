"""The DICOM adapters on kuva's own engine (dicom.net): SCPs, SCUs; codecs in dicom.codec."""
