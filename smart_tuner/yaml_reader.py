"""The project's one YAML reader, bounded: a config or objective file is a few KB, so a device, a runaway file or
an alias bomb is refused before it is built (:func:`yaml_load` for text, :func:`read_yaml` for a file, whose
problems are a :class:`~smart_tuner.errors.ConfigError` naming the file)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; hyperparameters are written that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


MAX_YAML_BYTES = 1 << 20  # a config or objective is a few KB; more is not one (or is /dev/zero)
MAX_YAML_NODES = 100_000  # values a document may stand for once its aliases are expanded


class YamlError(yaml.YAMLError):
    """A YAML document refused before it is built: its aliases expand past :data:`MAX_YAML_NODES` values, or it
    nests too deeply to read."""


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with exponent floats and a bound on aliases; the only YAML reader of the project.

    Anchors and aliases stay usable, but a document whose aliases stand for more than :data:`MAX_YAML_NODES` values
    (an alias bomb: 500 bytes of anchors nested 9 deep stand for 9^9 values) is refused before it is built:
    everything that walks a config as a tree (validation, flattening, MLflow parameters) would expand it."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise YamlError(f"its aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?)")
        return loader.construct_document(node)
    except RecursionError:
        raise YamlError("it nests too deeply to read") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for with every alias expanded; each node counted once (``sizes``), so the
    count costs the size of the document, not of its expansion. A node that contains itself counts as unbounded."""
    key = id(node)
    if key in sizes:
        if sizes[key] < 0:
            return MAX_YAML_NODES + 1  # a recursive alias: endless once expanded
        return sizes[key]
    sizes[key] = -1
    children: list = []
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    total = 1
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_YAML_NODES:
            break
    sizes[key] = total
    return total


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: where (line and column) and what, without PyYAML's quoted excerpt."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{' '.join(str(problem).split())}"


def read_yaml(path: str | Path) -> Any:
    """A config or objective file as YAML data (:func:`yaml_load`), read only up to :data:`MAX_YAML_BYTES`; every
    problem is a :class:`~smart_tuner.errors.ConfigError` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; name a YAML config or objective file")
    try:
        with path.open("rb") as handle:  # bounded: a device or a runaway file is not read to the end
            data = handle.read(MAX_YAML_BYTES + 1)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES >> 20} MiB; a config or objective file is a few KB")
    try:
        return yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
