"""Hypothesis fuzzing of SunSpec decoding and discovery: any input decodes or is a ProtocolError."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from derim.adapters.sunspec import (
    GroupDef,
    decode_model,
    model_definition,
    to_canonical,
    walk_models,
)
from derim.errors import ProtocolError

FUZZ = settings(max_examples=200, deadline=None)
LISTED_MODELS = [1, 101, 102, 103, 111, 112, 113, 120, 121, 122, 123, 124, 126, 160]
LISTED_MODELS += [701, 702, 703, 704, 705, 713, 802]
register_values = st.one_of(
    st.integers(0, 3),
    st.integers(0xFFF4, 0xFFFF),
    st.sampled_from([0x8000, 0x7FC0, 0x7F80, 0x5375]),
    st.integers(0, 0xFFFF),
)
"""Mostly plausible registers: small counts, exponents of either sign, sentinels, anything."""


@st.composite
def model_blocks(draw: st.DrawFn) -> tuple[int, list[int]]:
    """A listed model id and a block with its id and random content, mostly well-formed.

    Top-level scale factors hold small exponents and count points small counts, and ``L`` fits
    the repeating groups those counts imply, so most blocks reach the decoder's deeper paths.
    """
    model_id = draw(st.sampled_from(LISTED_MODELS))
    group = model_definition(model_id).group
    counted = {sub.count for sub in group.groups} | {
        s.count for g in group.groups for s in g.groups
    }
    tame = draw(st.integers(0, 9)) > 0
    fixed: list[int] = []
    counts: dict[str | int | None, int] = {None: 1}
    for point in group.points[2:]:
        values = register_values
        if tame and point.type == "sunssf":
            values = st.one_of(st.integers(0, 4), st.integers(0xFFFC, 0xFFFF), st.just(0x8000))
        elif tame and point.type == "string":
            values = st.one_of(st.just(0), st.integers(0x2020, 0x7E7E))
        elif point.name in counted:
            values = st.integers(0, 3)
        words = draw(st.lists(values, min_size=point.size, max_size=point.size))
        counts[point.name] = words[0]
        fixed += words
    counts[0] = draw(st.integers(0, 3))
    extra = sum(counts.get(sub.count, 0) * _size(sub, counts) for sub in group.groups)
    extra += draw(st.sampled_from([0, 0, 0, 1, -1]))
    body = fixed + draw(st.lists(register_values, min_size=max(0, extra), max_size=max(0, extra)))
    return model_id, [model_id, len(body), *body]


def _size(group: GroupDef, counts: dict[str | int | None, int]) -> int:
    """Registers of one instance of ``group`` when its count points hold ``counts``."""
    return group.points_size + sum(counts.get(s.count, 0) * _size(s, counts) for s in group.groups)


@FUZZ
@given(block=model_blocks())
def test_any_block_of_a_listed_model_decodes_or_raises_protocol_error(
    block: tuple[int, list[int]],
) -> None:
    """A well-framed block with random content decodes, and maps to canonical, or is rejected."""
    model_id, registers = block
    try:
        decoded = decode_model(model_id, registers)
    except ProtocolError:
        return
    assert decoded["ID"] == model_id
    fields = to_canonical({model_id: decoded})
    assert all(value is None or isinstance(value, float | str) for value in fields.values())


@FUZZ
@given(
    model_id=st.sampled_from(LISTED_MODELS),
    registers=st.lists(st.integers(-5, 0x10005), max_size=120),
)
def test_any_register_list_decodes_or_raises_protocol_error(
    model_id: int, registers: list[int]
) -> None:
    """Arbitrary register lists, values out of range included, never raise anything else."""
    with contextlib.suppress(ProtocolError):
        decode_model(model_id, registers)


@FUZZ
@given(
    base=st.sampled_from([0, 40000, 50000]),
    headers=st.lists(st.tuples(register_values, register_values), max_size=8),
)
def test_any_model_chain_walks_or_raises_protocol_error(
    base: int, headers: list[tuple[int, int]]
) -> None:
    """Random headers either give a model map inside the register space or are rejected."""
    image: dict[int, int] = {}
    address = base + 2
    for model_id, length in headers:
        image[address], image[address + 1] = model_id, length
        address += 2 + length
    try:
        models = walk_models(image, base)
    except ProtocolError:
        return
    assert all(entry.length > 0 and entry.end <= 0xFFFF for entry in models)
