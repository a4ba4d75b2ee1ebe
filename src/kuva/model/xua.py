"""The user an XDS request acts for, as a verified XUA assertion names them
(IHE ITI TF-2b 3.40, Cross-Enterprise User Assertion; OASIS XSPA profile of SAML 2.0).

Pure data: kuva.xds.xua reads and verifies the assertion and builds a
``RequestingUser``; access rules, the disclosure log and the audit trail record it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kuva.model.audit import Code


@dataclass(frozen=True)
class RequestingUser:
    """The subject of a verified assertion.

    ``name_id``: the Subject's NameID (ITI TF-2b 3.40.4.1.2.1); ``name``: the XSPA
    subject-id attribute (the person's name as the identity provider gives it);
    ``organization``: the XSPA organization-id (an OID, ``urn:oid:`` dropped; ""
    when the assertion names none); ``organization_name``: the XSPA organization;
    ``role`` and ``purpose_of_use``: the XSPA role and purpose of use (HL7 CE codes,
    None when absent); ``issuer``: who issued the assertion; ``assertion_id``: its ID.
    """

    name_id: str
    name: str
    organization: str
    organization_name: str
    role: Code | None
    purpose_of_use: Code | None
    issuer: str
    assertion_id: str

    def user_name(self) -> str:
        """The UserName of the human requestor in audit messages (ITI TF-2b 3.40.4.2:
        ``alias<user@issuer>``): the subject's name as the alias, then NameID and issuer."""
        return f"{self.name}<{self.name_id}@{self.issuer}>"
