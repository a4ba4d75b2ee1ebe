"""HL7 v2 over MLLP: the ADT messages that correct patient identity (services.patients)."""
