"""Grid-facing links: utility programmes and SCADA reaching the fleet through the control layer."""
