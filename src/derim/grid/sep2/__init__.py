"""IEEE 2030.5 (SEP2) client: the aggregator role of CSIP, as a DERIM grid link."""
