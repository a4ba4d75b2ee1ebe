"""The audit adapter (IHE ATNA): the DICOM Audit Message XML (PS3.15 A.5.1) and its
delivery to an audit record repository by syslog (RFC 5424 over RFC 5426 UDP or
RFC 5425 TLS).

A wire format of its own, used by every interface that is audited (DICOM, HL7,
XDS), so it sits beside those adapters rather than inside one of them; the rules
of what is audited and when live in kuva.services.audit.
"""
