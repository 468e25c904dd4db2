"""MQTT: topic and payload mappings to canonical telemetry, zero-loss ingestion, commands."""
