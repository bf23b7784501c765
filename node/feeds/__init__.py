"""Report feeds: HL7 v2 over MLLP and a CSV drop folder, each storing report text as received."""
