"""DNP3 (IEEE 1815): DERIM as an outstation toward a utility master."""
