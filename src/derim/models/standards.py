"""Field metadata tying canonical fields to units, IEEE 2030.5 and IEC 61968/61970 CIM names.

Each canonical field is declared with :func:`measurement`, which stores its unit and standard
names in the JSON schema (``x-unit``, ``x-ieee2030_5``, ``x-cim``) so code (docs, exporters,
mappers) can read them back with :func:`standard_names`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field
from pydantic.config import JsonDict


@dataclass(frozen=True, slots=True)
class StandardNames:
    """Where one canonical field lives in the standards, and its unit."""

    unit: str
    ieee2030_5: str
    cim: str


MAX_MAGNITUDE = 1e12
"""No quantity a DER reports or is rated for comes near this in DERIM's units (kW, kWh, V, A,
Hz, %, ...); a larger value is a fault or an attack, and letting it in would make sums and
means of stored readings overflow to infinity."""


def measurement(
    description: str,
    *,
    unit: str,
    ieee2030_5: str,
    cim: str,
    default: Any = None,
    **constraints: Any,
) -> Any:
    """A Pydantic ``Field`` for a canonical quantity, carrying its unit and standard names.

    A quantity with a unit is bounded to ``±MAX_MAGNITUDE`` unless ``constraints`` say tighter.
    """
    extra: JsonDict = {"x-unit": unit, "x-ieee2030_5": ieee2030_5, "x-cim": cim}
    if unit:
        constraints.setdefault("ge", -MAX_MAGNITUDE)
        constraints.setdefault("le", MAX_MAGNITUDE)
    return Field(default, description=description, json_schema_extra=extra, **constraints)


def standard_names(model: type[BaseModel]) -> dict[str, StandardNames]:
    """The unit and standard names of every field of ``model`` declared with :func:`measurement`."""
    names: dict[str, StandardNames] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and "x-unit" in extra:
            names[name] = StandardNames(
                unit=str(extra["x-unit"]),
                ieee2030_5=str(extra["x-ieee2030_5"]),
                cim=str(extra["x-cim"]),
            )
    return names
