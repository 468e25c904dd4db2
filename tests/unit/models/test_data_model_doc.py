"""docs/data-model.md and the models' own standard names agree, field for field."""

from __future__ import annotations

import re
from pathlib import Path

from derim.models import TELEMETRY_CLASSES, DERDevice
from derim.models.standards import standard_names

DOC = Path(__file__).parents[3] / "docs" / "data-model.md"


def documented_rows() -> dict[tuple[str, str], tuple[str, str, str]]:
    rows: dict[tuple[str, str], tuple[str, str, str]] = {}
    section = ""
    for line in DOC.read_text().splitlines():
        heading = re.match(r"### `(\w+)`", line)
        if heading:
            section = heading.group(1)
            continue
        cell = re.match(r"\| `(\w+)` \| (.*?) \| (.*?) \| (.*?) \|$", line)
        if cell and section:
            unit = "" if cell.group(2) == "—" else cell.group(2)
            rows[(section, cell.group(1))] = (unit, cell.group(3), cell.group(4))
    return rows


def test_every_field_is_documented_with_the_same_names() -> None:
    """Each class's own fields appear in the doc with the unit and standard names of the code."""
    rows = documented_rows()
    base = TELEMETRY_CLASSES[0]
    for cls in (DERDevice, *TELEMETRY_CLASSES):
        for name, names in standard_names(cls).items():
            if cls not in (DERDevice, base) and name in base.model_fields:
                continue
            assert rows.get((cls.__name__, name)) == (names.unit, names.ieee2030_5, names.cim), (
                f"{cls.__name__}.{name} is missing or differs in docs/data-model.md"
            )
