"""Protocol adapters: one subpackage per protocol, with I/O kept apart from pure decoding."""
