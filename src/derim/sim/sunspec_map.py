"""A simulated SunSpec device's register map that keeps what clients write to its controls.

The device holds each of its models as raw point values by name, as ``build_image`` takes them (a
sub-group's values as a nested dict under the group's name). Before the simulator changes its
measurements it takes the read-write points back from the live registers, so a value a client
wrote survives the next republished image. Points left out of the values read "not implemented"
and a write to them is overwritten, as on a device that lacks them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from derim.adapters.sunspec.discovery import walk_models
from derim.adapters.sunspec.image import build_image
from derim.adapters.sunspec.models import GroupDef, PointDef, model_definition

ModelValues = dict[str, Any]
"""Raw point values of one model by name; a sub-group's as a nested ``ModelValues``."""
PointPath = tuple[str, ...]
"""Names of the sub-groups leading to a point, then the point's name."""

SIGNED_TYPES = frozenset({"int16", "int32", "int64", "sunssf"})
"""Point types whose registers hold a two's-complement number."""


@cache
def point_locations(model_id: int) -> Mapping[PointPath, tuple[PointDef, int]]:
    """Every point of ``model_id`` by path, with its offset from the model's ``ID`` register.

    A sub-group follows its parent's points and the sub-groups before it. Raises ``ValueError``
    for a model with a repeating group, whose points have no fixed offset.
    """
    found: dict[PointPath, tuple[PointDef, int]] = {}

    def place(group: GroupDef, path: PointPath, start: int) -> int:
        if group.repeating:
            raise ValueError(f"model {model_id}: group {group.name} repeats")
        for point in group.points:
            found[(*path, point.name)] = (point, start + point.offset)
        position = start + group.points_size
        for sub in group.groups:
            position = place(sub, (*path, sub.name), position)
        return position

    place(model_definition(model_id).group, (), 0)
    return found


class SunSpecMap:
    """The models of one device at ``base``: raw values by model id, in map order."""

    def __init__(self, base: int, models: Sequence[tuple[int, ModelValues]]) -> None:
        """Lay out ``models``; ``ValueError`` if a model id appears twice."""
        self.values: dict[int, ModelValues] = dict(models)
        if len(self.values) != len(models):
            raise ValueError("a model id appears twice in the map")
        image = self.registers()
        self.size = len(image)
        """Registers of the image, from ``base`` on."""
        self.addresses = {
            entry.model_id: entry.address
            for entry in walk_models(dict(enumerate(image, base)), base)
        }
        """Address of each model's ``ID`` register."""

    def registers(self) -> list[int]:
        """The image of the current values, from the base address on."""
        return build_image(list(self.values.items()))

    def take_writes(self, live: Sequence[int]) -> None:
        """Copy the read-write points among the values from ``live`` (registers from address 0)."""
        for model_id, values in self.values.items():
            _take(values, (), point_locations(model_id), live, self.addresses[model_id])


def _take(
    values: ModelValues,
    path: PointPath,
    locations: Mapping[PointPath, tuple[PointDef, int]],
    live: Sequence[int],
    address: int,
) -> None:
    """Refresh the read-write integer points of ``values`` (the group at ``path``) from ``live``."""
    for name, value in values.items():
        if isinstance(value, dict):
            _take(value, (*path, name), locations, live, address)
            continue
        point, offset = locations[(*path, name)]
        if point.access == "RW":
            start = address + offset
            data = b"".join(r.to_bytes(2, "big") for r in live[start : start + point.size])
            values[name] = int.from_bytes(data, "big", signed=point.type in SIGNED_TYPES)
