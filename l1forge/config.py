"""One mechanism for every configuration: YAML in, frozen dataclasses out, validated by pydantic.

Each part declares its settings as frozen dataclasses deriving from `Section`, with their ranges
as ``Annotated`` constraints (`Int`, `Real`, `Text`, `one_of`) and cross-field checks as pydantic
``model_validator``s raising `KeyedError`. `validate` checks a parsed mapping against such a class
and turns the first pydantic error into a `ConfigError` whose message starts with the dotted key
(``workers.timeout_s: ...``, ``menu.seeds[2].model: ...``). Direct construction in code stays a
plain dataclass call; validation happens once, where YAML comes in.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from l1forge.errors import ConfigError

T = TypeVar("T")

Int = Annotated[int, Strict()]  # booleans and floats refused
Real = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # an int or float, finite
Text = Annotated[str, Strict(), Field(min_length=1)]  # a non-empty string
Flag = Annotated[bool, Strict()]


class KeyedError(ValueError):
    """Raised by a validator for the sub-key ``key`` of the section being checked."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def one_of(choices: Sequence[str]) -> AfterValidator:
    """A constraint for ``Annotated[str, ...]``: the value must be one of ``choices``."""

    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return AfterValidator(check)


@dataclass(frozen=True)
class Section:
    """Base of configuration dataclasses: unknown keys are refused, an empty (null) section
    means every default, and defaults pass the same checks (relative paths get resolved)."""

    __pydantic_config__ = ConfigDict(extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_defaults(cls, data: Any) -> Any:
        return {} if data is None else data


def dotted(loc: Sequence[int | str]) -> str:
    """``("menu", "seeds", 2, "model")`` -> ``menu.seeds[2].model``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_PHRASES = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "string_too_short": "expected a non-empty string",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "too_short": "expected at least {min_length} item(s)",
    "too_long": "expected at most {max_length} items",
    "dict_type": "expected a mapping",
    "dataclass_type": "expected a mapping",
    "greater_than": "expected a value > {gt}",
    "greater_than_equal": "expected a value >= {ge}",
    "less_than": "expected a value < {lt}",
    "less_than_equal": "expected a value <= {le}",
}


_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _config_error(exc: ValidationError, prefix: Sequence[int | str]) -> ConfigError:
    """The first pydantic error as a `ConfigError` that starts with the dotted key."""
    err = exc.errors()[0]
    loc = (*prefix, *err["loc"])
    kind, ctx = err["type"], err.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, ConfigError):  # a __post_init__ check: its message names its key
        return ConfigError(str(cause))
    if isinstance(cause, KeyedError) and cause.key:
        loc = (*loc, *cause.key.split("."))
    if isinstance(cause, ValueError):
        reason = str(cause)
    elif kind in ("missing", "missing_argument"):
        reason = "missing"
    elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
        reason = "unknown key"
    elif kind in ("dict_type", "dataclass_type"):
        reason = f"expected a mapping, got {type(err.get('input')).__name__}"
    else:
        phrase = _PHRASES.get(kind)
        shown = repr(err.get("input"))
        shown = shown if len(shown) <= 80 else shown[:76] + " ..."
        text = phrase.format(**ctx) if phrase else err["msg"]
        value = err.get("input")
        if kind in _BOUNDS and isinstance(value, int | float) and not isinstance(value, bool):
            text = text.replace("a value", "an integer" if isinstance(value, int) else "a number")
        reason = f"{text}, got {shown}"
    return ConfigError(f"{dotted(loc) or 'configuration'}: {reason}")


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}  # built once per type: pydantic's schema build is slow


def _adapter(tp: Any) -> TypeAdapter[Any]:
    if tp not in _ADAPTERS:
        _ADAPTERS[tp] = TypeAdapter(tp)
    return _ADAPTERS[tp]


def validate(cls: type[T], raw: Any, root: str = "", context: dict[str, Any] | None = None) -> T:
    """``raw`` checked against ``cls``; a `ConfigError` naming the dotted key (prefixed with
    ``root``) otherwise. ``context`` reaches validators (e.g. the folder of relative paths)."""
    try:
        return _adapter(cls).validate_python(raw, context=context)
    except ValidationError as exc:
        raise _config_error(exc, (root,) if root else ()) from None


_FIELDS: dict[type, dict[str, TypeAdapter[Any]]] = {}


def _field_adapters(cls: type) -> dict[str, TypeAdapter[Any]]:
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls, include_extras=True)
        _FIELDS[cls] = {f.name: TypeAdapter(hints[f.name]) for f in dataclasses.fields(cls)}
    return _FIELDS[cls]


def check_fields(obj: Any, root: str) -> None:
    """The field constraints of a dataclass made in code rather than read from YAML (call it
    from ``__post_init__`` where direct construction must be checked too)."""
    for name, adapter in _field_adapters(type(obj)).items():
        try:
            adapter.validate_python(getattr(obj, name))
        except ValidationError as exc:
            raise _config_error(exc, (root, name)) from None


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed YAML document at ``path``; a `ConfigError` naming ``what`` and why otherwise."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {p}: {exc.strerror}") from exc
    return parse_yaml(text, str(p))


def parse_yaml(text: str, where: str) -> Any:
    """``text`` parsed as YAML; a `ConfigError` naming ``where`` otherwise."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})") from exc
