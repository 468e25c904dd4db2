"""SunSpec model definitions loaded from pysunspec2's JSON files."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from derim.adapters.sunspec import available_model_ids, model_definition
from derim.adapters.sunspec.models import TYPE_SIZES
from derim.errors import ProtocolError

LISTED_MODELS = [1, 101, 102, 103, 111, 112, 113, 120, 121, 122, 123, 124, 126, 160]
LISTED_MODELS += [701, 702, 703, 704, 705, 713, 802]


@pytest.mark.parametrize("model_id", LISTED_MODELS)
def test_every_listed_model_loads_with_its_header(model_id: int) -> None:
    """Each model issue 3 names loads, starts with ID and L, and lays points out back to back."""
    definition = model_definition(model_id)
    assert definition.model_id == model_id
    assert [point.name for point in definition.group.points[:2]] == ["ID", "L"]
    offsets = [point.offset for point in definition.group.points]
    sizes = [point.size for point in definition.group.points]
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]


def test_every_shipped_model_loads() -> None:
    """All models pysunspec2 ships load, so every point type they use is handled."""
    ids = available_model_ids()
    assert set(LISTED_MODELS) <= ids
    for model_id in ids:
        assert model_definition(model_id).model_id == model_id


@pytest.mark.parametrize(
    ("model_id", "length"), [(1, 66), (103, 50), (113, 60), (120, 26), (701, 153), (713, 7)]
)
def test_fixed_models_have_the_spec_length(model_id: int, length: int) -> None:
    """A model without repeating groups knows its L value (registers after the header)."""
    assert model_definition(model_id).length == length


def test_model_103_points_carry_offset_type_scale_factor_units_and_symbols() -> None:
    """Model 103's W sits at offset 14 as int16 scaled by W_SF, in W; St 4 is MPPT."""
    group = model_definition(103).group
    watts = group.point("W")
    assert (watts.offset, watts.type, watts.size, watts.sf, watts.units) == (
        14,
        "int16",
        1,
        "W_SF",
        "W",
    )
    assert group.point("W_SF").offset == 15
    assert group.point("WH").type == "acc32"
    assert group.point("St").symbols[4] == "MPPT"


def test_common_model_strings_take_their_sizes() -> None:
    """Model 1's Mn is a 16-register string and its Pad takes one register."""
    group = model_definition(1).group
    assert (group.point("Mn").type, group.point("Mn").size) == ("string", 16)
    assert group.point("Pad").type == "pad"


def test_mppt_modules_fill_the_rest_of_model_160() -> None:
    """Model 160's modules repeat to fill the model (count 0), 20 registers each."""
    definition = model_definition(160)
    (module,) = definition.group.groups
    assert (module.name, module.count, module.points_size) == ("module", 0, 20)
    assert definition.length is None
    assert definition.min_length == 8


def test_nested_counts_name_points_of_the_fixed_block() -> None:
    """Model 705's curves repeat NCrv times and their points NPt times."""
    (curve,) = model_definition(705).group.groups
    (point,) = curve.groups
    assert (curve.count, point.count) == ("NCrv", "NPt")
    assert point.point("V").sf == "V_SF"


def test_single_groups_are_not_repeating() -> None:
    """Model 704's power-factor groups occur once each."""
    groups = model_definition(704).group.groups
    assert [group.name for group in groups] == ["PFWInj", "PFWInjRvrt", "PFWAbs", "PFWAbsRvrt"]
    assert not any(group.repeating for group in groups)
    assert model_definition(704).length == 65


def test_fixed_integer_scale_factors_are_kept() -> None:
    """A point whose sf is a number in the JSON (model 304) keeps that exponent."""
    assert model_definition(304).group.groups[0].point("Inclx").sf == -2


def test_definitions_are_cached() -> None:
    """Loading a model twice returns the same object."""
    assert model_definition(802) is model_definition(802)


def test_unknown_model_raises_protocol_error() -> None:
    """A model id pysunspec2 has no definition for is a ProtocolError."""
    with pytest.raises(ProtocolError, match="no SunSpec definition for model 999"):
        model_definition(999)


def test_type_sizes_cover_every_point_type_of_the_schema() -> None:
    """Every point type pysunspec2's JSON schema allows, strings aside, has a register width."""
    schema = json.loads(files("sunspec2").joinpath("models", "json", "schema.json").read_text())
    types = set(schema["definitions"]["point"]["properties"]["type"]["enum"])
    assert types - {"string"} == set(TYPE_SIZES)
