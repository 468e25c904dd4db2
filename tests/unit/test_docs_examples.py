"""The configuration examples in the grid protocols page are valid settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from derim.config import load_settings

GRID_PAGE = Path(__file__).parents[2] / "docs" / "grid.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", GRID_PAGE.read_text(), re.S)


def test_the_page_has_an_example_per_protocol() -> None:
    """One YAML example each for openadr, dnp3, sep2 and an IEC 61850 device."""
    keys = [next(iter(yaml.safe_load(block))) for block in BLOCKS]
    assert keys == ["openadr", "dnp3", "sep2", "devices"]


@pytest.mark.parametrize("block", BLOCKS)
def test_each_example_loads_as_settings(block: str, tmp_path: Path) -> None:
    """Every example validates as DERIM settings as written."""
    settings = load_settings(data_dir=tmp_path, **yaml.safe_load(block))
    assert settings.openadr or settings.dnp3 or settings.sep2 or settings.devices
