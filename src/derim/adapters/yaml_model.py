"""YAML documents validated by a Pydantic model, with errors naming the file, the field path and
the YAML line where the offending item starts (device profiles, MQTT mappings), and the loader
of device profiles, shipped or from a file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from derim.errors import ConfigError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A document section: unknown keys, NaN and infinity refused; immutable once loaded."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


def inherit(data: Any, key: str, names: tuple[str, ...]) -> Any:
    """Copy settings ``names`` of ``data`` into each mapping in ``data[key]`` that lacks them."""
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        return data
    inherited = {name: data[name] for name in names if name in data}
    children = [inherited | child if isinstance(child, dict) else child for child in data[key]]
    return data | {key: children}


class RuleError(ValueError):
    """A cross-field problem in a document; ``loc`` is the path of the culprit below the model
    that raised it."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def load_yaml_model(
    text: str,
    source: str,
    model: type[M],
    kind: str,
    tidy: Callable[[Loc], Loc] = lambda loc: loc,
) -> M:
    """Parse ``text`` and validate it as ``model``; ``ConfigError`` naming ``source`` (and the
    ``kind`` of document) with every problem's path and line. ``tidy`` rewrites Pydantic's error
    paths (to drop a union's tag, say) before they are shown."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.context_mark or exc.problem_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    finally:
        loader.dispose()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            cause = err.get("ctx", {}).get("error")
            loc = tidy(tuple(err["loc"]))
            if isinstance(cause, RuleError):
                loc += cause.loc
            message = str(cause) if isinstance(cause, ValueError) else err["msg"]
            path = ".".join(str(part) for part in loc) or "(top level)"
            problems.append(f"{path} (line {yaml_line(root, loc)}): {message}")
        raise ConfigError(f"{source}: invalid {kind}: {'; '.join(problems)}") from exc


@dataclass(frozen=True, slots=True)
class ProfileLoader(Generic[M]):
    """Loads the YAML documents of one kind, validated as ``model``: from text, from a file or
    shipped in ``package``'s ``profiles`` folder; ``kind`` names them in ``ConfigError``
    messages (``device profile``, ``IEC 61850 profile``)."""

    model: type[M]
    kind: str
    package: str

    def text(self, text: str, source: str = "<string>") -> M:
        """Validate the YAML ``text``; ``source`` names it in ``ConfigError`` messages."""
        return load_yaml_model(text, source, self.model, self.kind)

    def file(self, path: str | Path) -> M:
        """Read and validate the YAML file at ``path``; ``ConfigError`` if unreadable or invalid."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {self.kind} {path}: {exc}") from exc
        return self.text(text, str(path))

    def shipped(self, name: str) -> M:
        """The document ``name`` shipped with DERIM; ``ConfigError`` if there is none."""
        resource = files(self.package).joinpath("profiles", f"{name}.yaml")
        if not resource.is_file():
            raise ConfigError(f"no shipped {self.kind} named {name!r}")
        return self.text(resource.read_text(encoding="utf-8"), f"shipped profile {name}")


def yaml_line(node: yaml.Node | None, loc: Loc) -> int:
    """1-based line where the deepest YAML node along ``loc`` starts (1 for an empty document)."""
    if node is None:
        return 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if str(k.value) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if 0 <= part < len(node.value) else None
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1
