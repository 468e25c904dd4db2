"""OpenADR 2.0b VEN: demand-response events from a utility's VTN become power limits on DERIM
device groups, and the groups' active power is reported back (built on openleadr)."""
