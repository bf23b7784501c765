"""HL7 v2 result messages out: the AI result of a run as an ORU^R01, sent over MLLP."""
