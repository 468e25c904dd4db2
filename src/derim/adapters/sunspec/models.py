"""SunSpec model definitions, loaded from the JSON files that pysunspec2 ships; no I/O to devices.

A model is a tree of groups. The top-level group starts with the ``ID`` and ``L`` header points;
each group holds points followed by sub-groups. A sub-group appears once (``count`` None), a fixed
number of times, as often as a count point says (``count`` names a point of an enclosing group),
or, with ``count`` 0, as often as fits in the rest of the model (its length comes from ``L``).
Definitions are read once per model id and cached.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from types import MappingProxyType
from typing import Any

from derim.errors import ConfigError, ProtocolError

TYPE_SIZES: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "count": 1,
    "acc16": 1,
    "enum16": 1,
    "bitfield16": 1,
    "raw16": 1,
    "pad": 1,
    "sunssf": 1,
    "int32": 2,
    "uint32": 2,
    "acc32": 2,
    "enum32": 2,
    "bitfield32": 2,
    "ipaddr": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "acc64": 4,
    "bitfield64": 4,
    "float64": 4,
    "eui48": 4,
    "ipv6addr": 8,
}
"""Registers taken by each fixed-width SunSpec point type (a ``string`` gives its own size)."""

HEADER_SIZE = 2
"""Registers of a model header: the model id and the length ``L`` of the rest of the model."""

_JSON_DIR = files("sunspec2").joinpath("models", "json")


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point: ``size`` registers at ``offset`` from the start of its group instance.

    For points of the top-level group the offset counts from the model's ``ID`` register. ``sf``
    names the scale-factor point (searched in the point's group, then in enclosing groups) or is a
    fixed power-of-ten exponent; ``symbols`` maps enum and bitfield codes to their names.
    """

    name: str
    type: str
    size: int
    offset: int
    sf: str | int | None
    units: str
    access: str
    symbols: Mapping[int, str]


@dataclass(frozen=True, slots=True)
class GroupDef:
    """A group: its points, then its sub-groups; ``count`` as in the module docstring."""

    name: str
    points: tuple[PointDef, ...]
    groups: tuple[GroupDef, ...] = ()
    count: int | str | None = None
    points_size: int = field(init=False)
    """Registers taken by the group's own points (sub-groups excluded)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "points_size", sum(point.size for point in self.points))

    @property
    def repeating(self) -> bool:
        """Whether instances of the group are decoded as a list (``count`` given)."""
        return self.count is not None

    def point(self, name: str) -> PointDef:
        """The point ``name`` of this group; ``KeyError`` if it has none of that name."""
        for point in self.points:
            if point.name == name:
                return point
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class ModelDef:
    """A SunSpec model: id, name, top-level group and, when fixed, its length ``L`` (registers)."""

    model_id: int
    name: str
    label: str
    group: GroupDef
    length: int | None

    @property
    def min_length(self) -> int:
        """Smallest valid ``L``: the top-level points without their header (registers)."""
        return self.group.points_size - HEADER_SIZE


def available_model_ids() -> frozenset[int]:
    """Ids of every model whose definition pysunspec2 ships."""
    ids = set()
    for entry in _JSON_DIR.iterdir():
        stem = entry.name.removesuffix(".json")
        if entry.name.startswith("model_") and stem != entry.name:
            ids.add(int(stem.removeprefix("model_")))
    return frozenset(ids)


@cache
def model_definition(model_id: int) -> ModelDef:
    """The definition of ``model_id``; ``ProtocolError`` if pysunspec2 ships none for it.

    Raises ``ConfigError`` when the shipped file breaks an assumption this decoder relies on.
    """
    resource = _JSON_DIR.joinpath(f"model_{model_id}.json")
    if not resource.is_file():
        raise ProtocolError(f"no SunSpec definition for model {model_id}")
    source = f"SunSpec model {model_id}"
    data = json.loads(resource.read_text(encoding="utf-8"))
    group = _group(data["group"], source, top_level=True)
    if [point.name for point in group.points[:HEADER_SIZE]] != ["ID", "L"]:
        raise ConfigError(f"{source}: the top-level group does not start with ID and L")
    size = _fixed_size(group)
    return ModelDef(
        model_id=int(data["id"]),
        name=str(data["group"]["name"]),
        label=str(data.get("label", "")),
        group=group,
        length=None if size is None else size - HEADER_SIZE,
    )


def _group(data: Mapping[str, Any], source: str, top_level: bool = False) -> GroupDef:
    """A ``GroupDef`` from its JSON ``data``; ``ConfigError`` for an unsupported layout."""
    name = str(data["name"])
    points = []
    offset = 0
    for spec in data.get("points", []):
        point = _point(spec, offset, f"{source} {name}")
        points.append(point)
        offset += point.size
    groups = tuple(_group(sub, f"{source} {name}") for sub in data.get("groups", []))
    for index, sub in enumerate(groups):
        if sub.count == 0 and not (top_level and index == len(groups) - 1 and not sub.groups):
            raise ConfigError(f"{source}: group {sub.name} fills the model but is not last")
    count = data.get("count")
    if count is not None and not isinstance(count, int | str):
        raise ConfigError(f"{source}: group {name} has count {count!r}")
    return GroupDef(name=name, points=tuple(points), groups=groups, count=count)


def _point(spec: Mapping[str, Any], offset: int, source: str) -> PointDef:
    """A ``PointDef`` at ``offset`` from its JSON ``spec``; ``ConfigError`` for unknown types."""
    name, kind, size = str(spec["name"]), str(spec["type"]), int(spec["size"])
    expected = size if kind == "string" else TYPE_SIZES.get(kind)
    if expected is None or size != expected or size < 1:
        raise ConfigError(f"{source}: point {name} has type {kind!r} and size {size}")
    symbols = {int(symbol["value"]): str(symbol["name"]) for symbol in spec.get("symbols", [])}
    return PointDef(
        name=name,
        type=kind,
        size=size,
        offset=offset,
        sf=spec.get("sf"),
        units=str(spec.get("units", "")),
        access=str(spec.get("access", "R")),
        symbols=MappingProxyType(symbols),
    )


def _fixed_size(group: GroupDef) -> int | None:
    """Registers of one instance of ``group`` when it has no repeating sub-group, else None."""
    size = group.points_size
    for sub in group.groups:
        sub_size = _fixed_size(sub)
        if sub.repeating or sub_size is None:
            return None
        size += sub_size
    return size
