"""Environment-variable configuration shared by every service.

A service declares one frozen dataclass whose fields carry `env(...)` metadata: the variable name,
a parser and a one-line description. `load` reads them all, collects every mistake and raises one
`ConfigError` listing each, so a misconfigured container says everything that is wrong at once.
`describe` renders the table that `docs/configuration.md` shows.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def env(name: str, default: Any, doc: str, parse: Callable[[str], Any] | None = None) -> Any:
    """Declare a config field bound to an environment variable."""
    meta = {"env": name, "doc": doc, "parse": parse}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def parse_int(text: str) -> int:
    try:
        return int(text.strip().replace("_", ""), 10)
    except ValueError:
        raise ValueError("expected an integer") from None


def parse_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError("expected a number") from None


def parse_size(text: str) -> int:
    """Bytes, with optional KiB/MiB/GiB (or KB/MB/GB, decimal) suffix."""
    units = {
        "kib": 1024,
        "mib": 1024**2,
        "gib": 1024**3,
        "kb": 1000,
        "mb": 1000**2,
        "gb": 1000**3,
        "k": 1024,
        "m": 1024**2,
        "g": 1024**3,
        "b": 1,
    }
    cleaned = text.strip().lower().replace("_", "")
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if cleaned.endswith(suffix):
            return int(float(cleaned[: -len(suffix)]) * factor)
    return int(cleaned, 10)


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


_DEFAULT_PARSERS: dict[Any, Callable[[str], Any]] = {
    bool: parse_bool,
    int: parse_int,
    float: parse_float,
    str: str,
    "bool": parse_bool,
    "int": parse_int,
    "float": parse_float,
    "str": str,
}


def _parser_for(field: dataclasses.Field) -> Callable[[str], Any]:
    parse = field.metadata.get("parse")
    if parse is not None:
        return parse
    annotation = field.type
    if isinstance(annotation, str):
        annotation = annotation.split("|")[0].strip()
    if annotation in ("list[str]",):
        return parse_list
    return _DEFAULT_PARSERS.get(annotation, str)


def load_all(*classes, environ: Mapping[str, str] | None = None) -> list:
    """Load several config classes, reporting the mistakes of all of them in one ConfigError."""
    loaded, problems = [], []
    for cls in classes:
        try:
            loaded.append(load(cls, environ))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return loaded


def load(cls, environ: Mapping[str, str] | None = None, **overrides):
    """Build `cls` from the environment; every bad variable is reported in one ConfigError."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    unparsed: list[str] = []
    for field in dataclasses.fields(cls):
        name = field.metadata.get("env")
        if field.name in overrides:
            values[field.name] = overrides[field.name]
            continue
        if name is None or name not in environ:
            continue
        raw = environ[name]
        try:
            values[field.name] = _parser_for(field)(raw)
        except (ValueError, TypeError) as exc:
            problems.append(f"{name}={raw!r}: {exc}")
            unparsed.append(name)
    # The cross-field checks run even when some variable did not parse (it keeps its default), so
    # every mistake shows at once; a check naming an unparsed variable would only repeat it.
    config = cls(**values)
    check = getattr(config, "problems", None)
    if check is not None:
        problems += [p for p in check() if not any(name in p for name in unparsed)]
    if problems:
        raise ConfigError(problems)
    return config


def describe(cls) -> list[tuple[str, str, str]]:
    """(variable, default, description) rows for documentation."""
    rows = []
    for field in dataclasses.fields(cls):
        name = field.metadata.get("env")
        if not name:
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = ""
        if isinstance(default, list):
            default = ",".join(default)
        rows.append((name, "" if default is None else str(default), field.metadata.get("doc", "")))
    return rows
