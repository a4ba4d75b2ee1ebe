"""The HTTP listener: health, metrics; later DICOMweb and the XDS endpoints."""
