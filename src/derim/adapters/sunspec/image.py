"""Register images of SunSpec devices for tests and simulators, encoded by pysunspec2 itself.

An image is the list of register values from the base address on: the 'SunS' marker, each model
(``ID``, ``L`` and its points) and the end marker. Point values are given raw, as the registers
hold them (before scale factors); points left out hold their "not implemented" sentinel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sunspec2.device

from derim.adapters.sunspec.discovery import END_MODEL_ID, MARKER
from derim.adapters.sunspec.models import model_definition
from derim.errors import ConfigError, ProtocolError

ModelData = Mapping[str, Any]
"""Raw point values of one model by point name; a repeating group takes a list of such dicts."""


def build_image(models: Sequence[tuple[int, ModelData]]) -> list[int]:
    """Registers from the base address of a device holding ``models`` (id, raw values) in order.

    Raises ``ConfigError`` for a model without a definition or a value name it does not have.
    """
    device = sunspec2.device.Device()
    for model_id, data in models:
        _check_names(model_id, data)
        device.add_model(sunspec2.device.Model(model_id=model_id, data=dict(data)))
    body: bytes = device.get_mb()
    registers = [int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body), 2)]
    return [*MARKER, *registers, END_MODEL_ID, 0]


def _check_names(model_id: int, data: ModelData) -> None:
    """Raise ``ConfigError`` unless every key of ``data`` is a top-level point or group name."""
    try:
        group = model_definition(model_id).group
    except ProtocolError as exc:
        raise ConfigError(f"no SunSpec definition for model {model_id}") from exc
    known = {point.name for point in group.points} | {sub.name for sub in group.groups}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"model {model_id} has no points or groups named {unknown}")
