"""The outstation's point database: built from the point map, and each refresh stored with
its quality (a point without a value keeps its last one, marked communication lost)."""

from __future__ import annotations

from dnp3.core.flags import AnalogQuality, BinaryQuality

from derim.grid.dnp3.config import Dnp3Config
from derim.grid.dnp3.outstation import apply, build_database
from derim.grid.dnp3.points import AnalogValue, BinaryValue, Snapshot

CONFIG = Dnp3Config.model_validate(
    {
        "analog_inputs": [{"index": 2, "device": "pv", "field": "power_kw"}],
        "binary_inputs": [{"index": 7, "device": "pv", "kind": "online"}],
        "analog_outputs": [{"index": 1, "device": "pv"}],
    }
)


def test_the_database_holds_exactly_the_mapped_points() -> None:
    """Analog input 2, binary input 7 and analog output 1, nothing else."""
    database = build_database(CONFIG)
    assert list(database.analog_inputs) == [2]
    assert list(database.binary_inputs) == [7]
    assert list(database.analog_outputs) == [1]
    assert database.binary_outputs == {}


def test_a_refresh_stores_values_and_quality() -> None:
    """Online values are stored ONLINE; a later refresh without a value keeps the last one
    as COMM_LOST, and an unknown binary is COMM_LOST."""
    database = build_database(CONFIG)
    apply(database, Snapshot([AnalogValue(2, 4200, True)], [BinaryValue(7, True, True)]))
    first = database.get_analog_input(2)
    assert first is not None
    assert (first.value, first.quality) == (4200, AnalogQuality.ONLINE)
    apply(database, Snapshot([AnalogValue(2, None, False)], [BinaryValue(7, False, False)]))
    analog = database.get_analog_input(2)
    binary = database.get_binary_input(7)
    assert analog is not None
    assert binary is not None
    assert (analog.value, analog.quality) == (4200, AnalogQuality.COMM_LOST)
    assert (binary.value, binary.quality) == (False, BinaryQuality.COMM_LOST)


def test_changes_become_events() -> None:
    """A changed value is queued as an event for class polls; an unchanged one is not."""
    database = build_database(CONFIG)
    values = Snapshot([AnalogValue(2, 10, True)], [BinaryValue(7, True, True)])
    apply(database, values)
    queued = database.event_buffer.total_count
    apply(database, values)
    assert database.event_buffer.total_count == queued
    apply(database, Snapshot([AnalogValue(2, 11, True)], []))
    assert database.event_buffer.total_count == queued + 1
