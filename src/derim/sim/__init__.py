"""Simulated devices that speak the real protocols (Modbus TCP and SunSpec, served by pymodbus)."""
