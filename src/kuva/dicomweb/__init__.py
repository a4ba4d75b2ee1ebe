"""DICOMweb (PS3.18) under /dicom-web: QIDO-RS so far."""
