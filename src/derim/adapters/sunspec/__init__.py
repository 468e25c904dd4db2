"""SunSpec adapter: model definitions from pysunspec2, discovery and decoding as pure functions.

``models`` loads the model definitions pysunspec2 ships, ``discovery`` finds the 'SunS' marker
and walks the model chain, ``decode`` turns a model's registers into point values and decoded
models into canonical telemetry, ``image`` builds register images for tests and simulators.
"""

from derim.adapters.sunspec.decode import (
    CANONICAL_SOURCES,
    DecodedBlock,
    DecodedValue,
    Source,
    decode_model,
    device_info,
    to_canonical,
)
from derim.adapters.sunspec.discovery import (
    BASE_ADDRESSES,
    END_MODEL_ID,
    MARKER,
    ChainWalker,
    ModelEntry,
    find_base,
    is_marker,
    walk_models,
)
from derim.adapters.sunspec.image import build_image
from derim.adapters.sunspec.models import (
    GroupDef,
    ModelDef,
    PointDef,
    available_model_ids,
    model_definition,
)

__all__ = [
    "BASE_ADDRESSES",
    "CANONICAL_SOURCES",
    "END_MODEL_ID",
    "MARKER",
    "ChainWalker",
    "DecodedBlock",
    "DecodedValue",
    "GroupDef",
    "ModelDef",
    "ModelEntry",
    "PointDef",
    "Source",
    "available_model_ids",
    "build_image",
    "decode_model",
    "device_info",
    "find_base",
    "is_marker",
    "model_definition",
    "to_canonical",
    "walk_models",
]
