"""SunSpec discovery (marker, model chain) and register images built by pysunspec2."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from derim.adapters.sunspec import (
    BASE_ADDRESSES,
    ChainWalker,
    ModelEntry,
    build_image,
    find_base,
    walk_models,
)
from derim.adapters.sunspec.discovery import MAX_MODELS
from derim.errors import ConfigError, ProtocolError

MODELS: list[tuple[int, dict[str, Any]]] = [
    (1, {"Mn": "ACME"}),
    (103, {"W": 100}),
    (160, {"N": 2, "module": [{}, {}]}),
]


def at(base: int, registers: Sequence[int]) -> dict[int, int]:
    """``registers`` as a mapping from address, the first at ``base``."""
    return {base + i: register for i, register in enumerate(registers)}


def chain(*headers: tuple[int, int], base: int = 40000) -> dict[int, int]:
    """An image of 'SunS' and models with the given (id, L) headers and zeroed bodies."""
    registers = [0x5375, 0x6E53]
    for model_id, length in headers:
        registers += [model_id, length, *[0] * length]
    return at(base, registers)


def test_image_starts_with_the_marker_and_ends_with_the_end_model() -> None:
    """build_image frames pysunspec2's encoding with 'SunS' and 0xFFFF, 0."""
    image = build_image(MODELS)
    assert image[:2] == [0x5375, 0x6E53]
    assert image[-2:] == [0xFFFF, 0]
    assert image[2:4] == [1, 66]


@pytest.mark.parametrize("base", [0, 40000, 50000])
def test_discovery_finds_the_base_and_walks_the_chain(base: int) -> None:
    """At each base, find_base sees the marker and walk_models lists id, address and L."""
    image = at(base, build_image(MODELS))

    def read_marker(address: int) -> list[int] | None:
        return [image[address], image[address + 1]] if address in image else None

    assert find_base(read_marker) == base
    models = walk_models(image, base)
    assert models == [
        ModelEntry(1, base + 2, 66),
        ModelEntry(103, base + 70, 50),
        ModelEntry(160, base + 122, 48),
    ]
    assert models[-1].end == base + 172
    assert image[models[-1].end] == 0xFFFF


def test_walk_models_takes_a_read_function() -> None:
    """walk_models also runs over read(address, count), reading only two registers per model."""
    image = at(0, build_image(MODELS))
    reads: list[tuple[int, int]] = []

    def read(address: int, count: int) -> list[int]:
        reads.append((address, count))
        return [image[address + i] for i in range(count)]

    assert [entry.model_id for entry in walk_models(read, 0)] == [1, 103, 160]
    assert reads == [(2, 2), (70, 2), (122, 2), (172, 2)]


def test_chain_walker_is_driven_one_header_at_a_time() -> None:
    """The walker names each header address to read, as the async layer will drive it."""
    walker = ChainWalker(40000)
    assert walker.next_address == 40002
    assert walker.feed([1, 66]) == 40070
    assert walker.feed([0xFFFF, 0]) is None
    assert walker.next_address is None
    assert walker.models == [ModelEntry(1, 40002, 66)]
    with pytest.raises(ProtocolError, match="already ended"):
        walker.feed([1, 66])


def test_find_base_raises_without_a_marker() -> None:
    """No 'SunS' at any candidate (wrong registers or failed reads) is a ProtocolError."""
    answers = {0: [0x5375, 0x6E54], 40000: None, 50000: [0, 0]}
    with pytest.raises(ProtocolError, match="no SunSpec marker"):
        find_base(answers.__getitem__)
    assert BASE_ADDRESSES == (40000, 0, 50000)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (chain((1, 66), (103, 0)), "length 0"),
        (chain((1, 66), (0, 12)), "no model id"),
        (chain((1, 65000)), "runs past 65535"),
        (chain((1, 66), (103, 50), base=0) | {0: 0x5375, 1: 0x6E53}, "lacks the header"),
        (chain((1, 66)) | {40070: 70000, 40071: 0}, "bad model header"),
    ],
)
def test_broken_chains_raise_protocol_error(image: dict[int, int], message: str) -> None:
    """Zero length, trailing garbage, overflow, a missing end marker or a bad header are errors."""
    with pytest.raises(ProtocolError, match=message):
        walk_models(image, min(image))


def test_an_endless_chain_stops_at_max_models() -> None:
    """A device answering the same header forever is cut off after MAX_MODELS models."""
    with pytest.raises(ProtocolError, match=f"more than {MAX_MODELS} models"):
        walk_models(lambda address, count: [64, 1], 0)


def test_build_image_rejects_unknown_names_and_models() -> None:
    """A typo in a point name or a model without a definition fails loudly."""
    with pytest.raises(ConfigError, match="no points or groups named"):
        build_image([(103, {"Watts": 1})])
    with pytest.raises(ConfigError, match="no SunSpec definition"):
        build_image([(999, {})])
