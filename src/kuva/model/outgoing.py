"""What a patient correction changes in an object on its way out.

The stored bytes never change (docs/design.md principle 1): a correction recorded
in the index (an HL7 merge, update or identifier change) is applied to each object
as it goes out, and sets these Patient Module attributes (PS3.3 C.7.1.1), the values
as stored being kept in an Original Attributes Sequence item (PS3.3 C.12.1.1.9.2).
services.retrieve decides the values; kuva.codec.outgoing writes them into
the outgoing bytes.
"""

from __future__ import annotations

# Patient Module attributes a correction sets on the way out (PS3.3 C.7.1.1).
CORRECTED_KEYWORDS: tuple[str, ...] = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
)
