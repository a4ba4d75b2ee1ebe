"""XDS.b / XDS-I.b adapter: SOAP 1.2 + MTOM/XOP, ebRIM 3.0, ITI-18/41/42/43, RAD-69."""
