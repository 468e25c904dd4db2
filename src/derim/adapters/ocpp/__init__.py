"""OCPP 1.6-J and 2.0.1 central system (CSMS): chargers connect to DERIM."""
