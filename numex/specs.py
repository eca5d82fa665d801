"""Routine and experiment specs: the YAML files under ``experiments/<routine>/``.

A **routine spec** (``routine.yaml``) defines a forecast product: its data
source, time column, case keys, target, features, training / holdout / cycle
periods, metrics, scorecard segments and gates. An **experiment spec**
(``<name>.yaml`` beside it) defines one candidate model for that routine.

This module is pure: no database, Flask or MLflow. It parses and validates the
specs, loads a routine's data and slices it, builds and trains estimators.
Every problem a user can cause is reported as a :class:`SpecError` naming the
file, the field (a dotted path), the bad value and what would be valid.
See ``docs/specs.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import ModuleType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import numpy as np
import pandas as pd
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_serializer,
    model_validator,
)

# --------------------------------------------------------------------------- vocabulary

#: Every metric a routine may score with. The first one a routine lists is its primary.
METRICS: tuple[str, ...] = ("bias", "mae", "rmse", "sde", "brier", "log_loss", "accuracy")
#: Which metrics make sense for which kind of forecast.
METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "regression": ("bias", "mae", "rmse", "sde"),
    "probabilistic": ("brier", "log_loss", "accuracy"),
}
TASKS: tuple[str, ...] = tuple(METRICS_BY_TASK)
#: Every automated check a gate may hold (evaluated in ``numex.gates``).
GATE_CHECKS: tuple[str, ...] = (
    "min_cycles",
    "min_cases",
    "significant_improvement",
    "no_significant_degradation",
    "offline_not_worse",
    "max_failure_rate",
)
#: The stages a candidate enters through a gate.
GATED_STAGES: tuple[str, ...] = ("parallel", "operational")
#: Segments a routine can derive from its time column.
SEGMENT_DERIVATIONS: tuple[str, ...] = ("season", "month", "hour-of-day")
SEASON_OF_MONTH: dict[int, str] = {
    12: "DJF", 1: "DJF", 2: "DJF",
    3: "MAM", 4: "MAM", 5: "MAM",
    6: "JJA", 7: "JJA", 8: "JJA",
    9: "SON", 10: "SON", 11: "SON",
}  # fmt: skip
#: Canonical text of a time in a case key (seconds resolution, no time zone).
CASE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
DATA_FILE_SUFFIXES: tuple[str, ...] = (".csv", ".parquet", ".pq")
ROUTINE_FILE = "routine.yaml"

_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$")
_CALLABLE_REF = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_CHECK_EXAMPLES = {
    "min_cycles": "min_cycles: 30",
    "min_cases": "min_cases: 500",
    "significant_improvement": "significant_improvement: {metric: rmse, level: 0.95}",
    "no_significant_degradation": "no_significant_degradation: {metrics: [mae], level: 0.95}",
    "offline_not_worse": "offline_not_worse: {metric: rmse}",
    "max_failure_rate": "max_failure_rate: 0.01",
}


# --------------------------------------------------------------------------- problems

_Problem = tuple[tuple[str | int, ...], Any, str]  # (loc, value, message), before a file is known


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with a spec: where (file, dotted field, line), what, and what is valid."""

    file: str
    field: str
    value: Any
    message: str
    line: int | None = None

    def __str__(self) -> str:
        text = ": ".join(part for part in (self.file, self.field, self.message) if part)
        if self.line is not None and self.field:
            text += f" (line {self.line})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (for an API error body); a value JSON cannot hold is given as its repr."""
        plain = isinstance(self.value, str | int | float | bool | type(None))
        return {
            "file": self.file,
            "field": self.field,
            "value": self.value if plain else _show(self.value, 200),
            "message": self.message,
            "line": self.line,
        }


class SpecError(ValueError):
    """A spec (or the data it points to) is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[SpecProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))

    def to_dict(self) -> dict[str, Any]:
        return {"error": str(self), "problems": [problem.to_dict() for problem in self.problems]}


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _valid(options: Iterable[Any]) -> str:
    return ", ".join(str(option) for option in options)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _display(path: Path | str) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    path = Path(path)
    with contextlib.suppress(ValueError, OSError):
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    return path.as_posix()


# --------------------------------------------------------------------------- value types


def _choice(kind: str, options: Sequence[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in options:
            raise ValueError(f"{value!r} is not a {kind}; valid: {_valid(options)}")
        return value

    return check


def _slug(value: str) -> str:
    if not _SLUG.match(value):
        raise ValueError(
            f"{value!r} is not a valid name; valid: lowercase letters, digits and "
            "single hyphens, e.g. 'seattle-tmax'"
        )
    return value


def _moment(value: Any) -> date:
    """A date (a whole day) or a date-time; a string is read as ISO 8601."""
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value
    if isinstance(value, date):
        return value
    raise ValueError(
        f"{_show(value)} is not a date; valid: a date like 2014-01-01 or a date-time "
        "like 2014-01-01T06:00"
    )


def _data_source(value: str) -> str:
    if Path(value).suffix.lower() in DATA_FILE_SUFFIXES or _CALLABLE_REF.match(value):
        return value
    raise ValueError(
        f"{value!r} is not a data source; valid: a {'/'.join(DATA_FILE_SUFFIXES)} file "
        "relative to the routine's folder, or module:function returning a DataFrame"
    )


def _cycle_length(value: str) -> str:
    try:
        step = pd.to_timedelta(value)
    except (ValueError, TypeError):
        step = None
    if step is None or step <= pd.Timedelta(0):
        raise ValueError(f"{value!r} is not a cycle length; valid: a positive duration like 1D, 6h")
    return value


def _dotted_path(value: str) -> str:
    if not _DOTTED.match(value):
        raise ValueError(
            f"{value!r} is not a dotted path; valid: package.module.Class, "
            "e.g. sklearn.linear_model.Ridge"
        )
    return value


def _callable_ref(value: str) -> str:
    if not _CALLABLE_REF.match(value):
        raise ValueError(
            f"{value!r} is not a factory reference; valid: module:function, "
            "e.g. models:ridge_pipeline"
        )
    return value


Slug = Annotated[StrictStr, AfterValidator(_slug)]
Text = Annotated[StrictStr, Field(min_length=1)]
Column = Annotated[StrictStr, Field(min_length=1)]
Metric = Annotated[StrictStr, AfterValidator(_choice("metric", METRICS))]
Count = Annotated[StrictInt, Field(ge=0)]
Level = Annotated[StrictFloat, Field(gt=0, lt=1)]
Fraction = Annotated[StrictFloat, Field(ge=0, le=1)]
Derivation = Annotated[StrictStr, AfterValidator(_choice("derivation", SEGMENT_DERIVATIONS))]
Moment = Annotated[date, PlainValidator(_moment), PlainSerializer(lambda v: v.isoformat())]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


# --------------------------------------------------------------------------- routine spec


class Period(_Spec):
    """A span of time, both ends included; an end given as a date includes that whole day."""

    start: Moment
    end: Moment

    @property
    def first(self) -> pd.Timestamp:
        return pd.Timestamp(self.start)

    @property
    def last(self) -> pd.Timestamp:
        """The last instant inside the period."""
        if isinstance(self.end, datetime):
            return pd.Timestamp(self.end)
        return pd.Timestamp(self.end) + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")

    def overlaps(self, other: Period) -> bool:
        return self.first <= other.last and other.first <= self.last

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"

    @model_validator(mode="after")
    def _start_not_after_end(self) -> Period:
        if self.first > self.last:
            raise ValueError(
                f"start {self.start.isoformat()} is after end {self.end.isoformat()}; "
                "valid: start on or before end"
            )
        return self


class Cycles(Period):
    """The span over which cycles run, one every ``length`` (e.g. ``1D``) from ``start``."""

    length: Annotated[StrictStr, AfterValidator(_cycle_length)]

    @property
    def step(self) -> pd.Timedelta:
        return pd.to_timedelta(self.length)


class DataSource(_Spec):
    """A CSV/Parquet file or a ``module:function``, relative to the routine's folder."""

    source: Annotated[StrictStr, AfterValidator(_data_source)]

    @property
    def is_file(self) -> bool:
        return Path(self.source).suffix.lower() in DATA_FILE_SUFFIXES


class Segment(_Spec):
    """A scorecard segment: the values of a data column, or derived from the time column."""

    name: Text
    column: Column | None = None
    derive: Derivation | None = None

    @model_validator(mode="after")
    def _column_or_derive(self) -> Segment:
        if (self.column is None) == (self.derive is None):
            raise ValueError(
                f"segment {self.name!r} needs exactly one of 'column' (a data column) or "
                f"'derive' ({_valid(SEGMENT_DERIVATIONS)})"
            )
        return self


class SignificantImprovement(_Spec):
    metric: Metric
    level: Level = 0.95


class NoSignificantDegradation(_Spec):
    metrics: list[Metric] = Field(min_length=1)
    level: Level = 0.95


class OfflineNotWorse(_Spec):
    metric: Metric


class GateCheck(_Spec):
    """One automated check, written ``{check_name: params}``; exactly one field is set.

    ``name`` and ``params`` give the check generically; params are an int
    (min_cycles, min_cases), a float (max_failure_rate) or a model.
    """

    min_cycles: Count | None = None
    min_cases: Count | None = None
    significant_improvement: SignificantImprovement | None = None
    no_significant_degradation: NoSignificantDegradation | None = None
    offline_not_worse: OfflineNotWorse | None = None
    max_failure_rate: Fraction | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_check(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and len(data) > 1:
            # A dump that kept the unset fields as None still names one check.
            data = {name: params for name, params in data.items() if params is not None} or data
        if not isinstance(data, Mapping) or len(data) != 1:
            raise ValueError(
                f"{_show(data)} is not a check; valid: one {{check_name: params}} mapping, "
                f"check names: {_valid(GATE_CHECKS)}"
            )
        ((name, params),) = data.items()
        if name in GATE_CHECKS and params is None:
            raise ValueError(f"check {name!r} needs parameters; valid: {_CHECK_EXAMPLES[name]}")
        return data

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Dumped as written in YAML, ``{check_name: params}``, not six mostly-None fields.
        return {self.name: handler(self)[self.name]}

    @property
    def name(self) -> str:
        return next(name for name in GATE_CHECKS if getattr(self, name) is not None)

    @property
    def params(self) -> Any:
        return getattr(self, self.name)

    def metrics(self) -> list[str]:
        """The metrics this check reads."""
        params = self.params
        if isinstance(params, NoSignificantDegradation):
            return list(params.metrics)
        metric = getattr(params, "metric", None)
        return [metric] if metric else []


class Gate(_Spec):
    """The rules to enter one stage: sign-offs required and automated checks."""

    sign_offs: Count
    checks: list[GateCheck] = Field(default_factory=list)


class Gates(_Spec):
    parallel: Gate
    operational: Gate

    def for_stage(self, stage: str) -> Gate:
        if stage not in GATED_STAGES:
            raise ValueError(f"{stage!r} has no gate; valid: {_valid(GATED_STAGES)}")
        return getattr(self, stage)


class RoutineSpec(_Spec):
    """A routine, as written in ``experiments/<routine>/routine.yaml``."""

    name: Slug
    title: Text
    data: DataSource
    time_column: Column
    case_keys: list[Column] = Field(min_length=1)
    target: Column
    features: list[Column] = Field(min_length=1)
    training: Period
    holdout: Period
    cycles: Cycles
    metrics: list[Metric] = Field(min_length=1)
    segments: list[Segment] = Field(default_factory=list)
    gates: Gates
    task: Annotated[StrictStr, AfterValidator(_choice("task", TASKS))] = "regression"

    _file: Path | None = PrivateAttr(default=None)

    @property
    def file(self) -> Path | None:
        """The routine.yaml this spec was read from (None when parsed from text)."""
        return self._file

    @property
    def folder(self) -> Path | None:
        """The routine's folder: data sources and factories resolve against it."""
        return self._file.parent if self._file else None

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]


# --------------------------------------------------------------------------- experiment spec


class EstimatorSpec(_Spec):
    """Either ``class`` (a dotted path to an estimator class) or ``factory`` (module:function)."""

    class_: Annotated[StrictStr, AfterValidator(_dotted_path)] | None = Field(
        default=None, alias="class"
    )
    factory: Annotated[StrictStr, AfterValidator(_callable_ref)] | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _class_or_factory(self) -> EstimatorSpec:
        if (self.class_ is None) == (self.factory is None):
            raise ValueError(
                "give exactly one of 'class' (a dotted path to an estimator class, e.g. "
                "sklearn.linear_model.Ridge) or 'factory' (module:function returning an estimator)"
            )
        return self


class ExperimentSpec(_Spec):
    """An experiment, as written in ``experiments/<routine>/<name>.yaml``.

    After :func:`load_experiment`, ``features`` and ``training`` are filled in
    from the routine when the file leaves them out.
    """

    routine: Slug
    name: Slug
    description: Text
    author: Text
    estimator: EstimatorSpec
    features: list[Column] | None = None
    training: Period | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] = 0

    _file: Path | None = PrivateAttr(default=None)

    @property
    def file(self) -> Path | None:
        return self._file

    @property
    def folder(self) -> Path | None:
        return self._file.parent if self._file else None


# --------------------------------------------------------------------------- YAML → model


class _Located:
    """Line numbers of the fields in a YAML text, to point a problem at its line."""

    def __init__(self, text: str) -> None:
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            self.root = None

    def line(self, loc: Sequence[str | int]) -> int | None:
        node = self.root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next((pair for pair in node.value if pair[0].value == part), None)
                if match is None:
                    # A field missing from the top level has no better line than none.
                    return line if node is not self.root else None
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    return line
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def duplicate_keys(self) -> list[tuple[tuple[str | int, ...], str, int]]:
        found: list[tuple[tuple[str | int, ...], str, int]] = []

        def walk(node: yaml.Node, loc: tuple[str | int, ...]) -> None:
            if isinstance(node, yaml.MappingNode):
                seen: set[str] = set()
                for key, value in node.value:
                    if key.value in seen:
                        found.append((loc, key.value, key.start_mark.line + 1))
                    seen.add(key.value)
                    walk(value, (*loc, key.value))
            elif isinstance(node, yaml.SequenceNode):
                for index, item in enumerate(node.value):
                    walk(item, (*loc, index))

        if self.root is not None:
            walk(self.root, ())
        return found


def _dotted(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class found at ``loc`` inside ``model`` (to list its valid fields)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = get_args(current)
            current = args[0] if args else None
        elif inspect.isclass(current) and issubclass(current, BaseModel):
            field = next(
                (f for name, f in current.model_fields.items() if part in (name, f.alias)), None
            )
            current = field.annotation if field else None
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if inspect.isclass(current) and issubclass(current, BaseModel) else None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


_PHRASES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "greater_than_equal": "must be ≥ {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be ≤ {le}",
    "less_than": "must be < {lt}",
    "too_short": "must have at least {min_length} item(s)",
    "string_too_short": "must not be empty",
}


def _problem_from_error(error: Mapping[str, Any], model: type[BaseModel]) -> _Problem:
    """A pydantic error in the words of a spec problem: field, value, what is valid."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    if kind == "missing":
        return loc, None, "required field is missing"
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        name = loc[-1]
        if parent is GateCheck:
            return loc, name, f"{name!r} is not a gate check; valid: {_valid(GATE_CHECKS)}"
        if parent is Gates:
            return loc, name, f"{name!r} is not a gated stage; valid: {_valid(GATED_STAGES)}"
        valid = _valid(_field_names(parent)) if parent else "none"
        where = "top-level field" if len(loc) == 1 else "field"
        return loc, name, f"unknown {where} {name!r}; valid fields: {valid}"
    if kind == "value_error":
        return loc, value, str(error["ctx"]["error"])
    phrase = _PHRASES.get(kind)
    if phrase:
        phrase = phrase.format(**error.get("ctx", {}))
    else:
        message = error["msg"]
        phrase = message[:1].lower() + message[1:]
    return loc, value, f"{_show(value)} is not valid; {phrase}"


def _partial(model: type[BaseModel], data: Mapping[str, Any], bad: set[Any]) -> Any:
    """A model holding only the fields that validated, so cross-checks can still run on them."""
    values = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key in bad or key not in data:
            continue
        annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else None
        with contextlib.suppress(ValidationError):
            adapter = TypeAdapter(annotation or field.annotation)
            values[name] = adapter.validate_python(data[key])
    return model.model_construct(**values)


def _has(spec: BaseModel, *names: str) -> bool:
    """Whether ``spec`` holds valid values for ``names`` (a partial spec may not)."""
    return all(name in spec.__dict__ for name in names)


def _read_yaml(
    text: str, file: str, model: type[BaseModel]
) -> tuple[Any, list[SpecProblem], _Located]:
    """Parse and validate ``text``: the model and every problem found.

    With problems, the model is None (unreadable YAML) or partial: it holds
    only the fields that validated.
    """
    located = _Located(text)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(error, "problem", None) or str(error)
        line = mark.line + 1 if mark else None
        return None, [SpecProblem(file, "", None, f"{where}invalid YAML: {reason}", line)], located
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        message = f"the file is {kind}; valid: a mapping of {_valid(_field_names(model))}"
        return None, [SpecProblem(file, "", data, message)], located
    twice = "is given twice; the later value would silently win"
    problems = [
        SpecProblem(file, _dotted((*loc, key)), key, f"{key!r} {twice}", line)
        for loc, key, line in located.duplicate_keys()
    ]
    try:
        spec = model.model_validate(data)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        for item in errors:
            loc, value, message = _problem_from_error(item, model)
            problems.append(SpecProblem(file, _dotted(loc), value, message, located.line(loc)))
        bad_fields = {item["loc"][0] for item in errors if item["loc"]}
        return _partial(model, data, bad_fields), problems, located
    return spec, problems, located


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise SpecError([SpecProblem(_display(path), "", str(path), f"no such {what} file")])
    return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- routine loading


def load_routine(path: Path | str) -> RoutineSpec:
    """Read and validate a routine spec: ``path`` is its folder or its routine.yaml."""
    path = Path(path)
    if path.is_dir() or path.suffix not in (".yaml", ".yml"):
        path = path / ROUTINE_FILE
    return parse_routine(_read_text(path, "routine spec"), file=path)


def parse_routine(text: str, *, file: Path | str) -> RoutineSpec:
    """Validate the routine spec ``text`` as if read from ``file`` (its folder is the routine's)."""
    file = Path(file)
    shown = _display(file)
    spec, problems, located = _read_yaml(text, shown, RoutineSpec)
    if spec is not None:
        folder_name = file.parent.name
        for loc, value, message in _routine_cross_problems(spec, folder_name):
            problems.append(SpecProblem(shown, _dotted(loc), value, message, located.line(loc)))
    if problems:
        raise SpecError(problems)
    spec._file = file
    return spec


def _duplicates(items: Sequence[str], field: str) -> list[_Problem]:
    seen: set[str] = set()
    found = []
    for index, item in enumerate(items):
        if item in seen:
            found.append(((field, index), item, f"{item!r} is listed twice; valid: each once"))
        seen.add(item)
    return found


def _routine_cross_problems(spec: RoutineSpec, folder_name: str) -> list[_Problem]:
    """Problems between fields; ``spec`` may be partial, so each check needs its fields."""
    found: list[_Problem] = []

    def flag(loc: tuple[str | int, ...], value: Any, message: str) -> None:
        found.append((loc, value, message))

    if _has(spec, "name") and folder_name and spec.name != folder_name:
        flag(("name",), spec.name, f"{spec.name!r} is not its folder's name; valid: {folder_name}")
    if _has(spec, "time_column", "case_keys") and spec.time_column not in spec.case_keys:
        flag(
            ("case_keys",),
            spec.case_keys,
            f"{spec.case_keys!r} lacks the time column; valid: case keys that include "
            f"{spec.time_column!r}",
        )
    for field in ("features", "case_keys"):
        if not _has(spec, field):
            continue
        found += _duplicates(getattr(spec, field), field)
        for index, column in enumerate(getattr(spec, field)):
            if _has(spec, "target") and column == spec.target:
                flag((field, index), column, f"{column!r} is the target; valid: any other column")
    if _has(spec, "segments"):
        found += _duplicates([segment.name for segment in spec.segments], "segments")
    if _has(spec, "metrics"):
        found += _duplicates(spec.metrics, "metrics")
        valid_metrics = METRICS_BY_TASK[spec.task]
        for index, metric in enumerate(spec.metrics):
            if metric not in valid_metrics:
                flag(
                    ("metrics", index),
                    metric,
                    f"{metric!r} does not score a {spec.task} forecast (task: {spec.task}); "
                    f"valid: {_valid(valid_metrics)}",
                )
    if _has(spec, "training", "holdout") and spec.holdout.overlaps(spec.training):
        flag(
            ("holdout",),
            str(spec.holdout),
            f"{spec.holdout} overlaps training {spec.training}; "
            "valid: a holdout period outside the training period",
        )
    for name in ("training", "holdout"):
        if _has(spec, "cycles", name) and spec.cycles.overlaps(getattr(spec, name)):
            flag(
                ("cycles",),
                str(spec.cycles),
                f"{spec.cycles} overlaps {name} {getattr(spec, name)}; "
                "valid: cycles after the training and holdout periods",
            )
    if _has(spec, "gates", "metrics"):
        found += _gate_metric_problems(spec.gates, spec.metrics)
    return found


def _gate_metric_problems(gates: Gates, metrics: Sequence[str]) -> list[_Problem]:
    """A gate can only check metrics the routine scores."""
    found: list[_Problem] = []
    for stage in GATED_STAGES:
        for index, check in enumerate(gates.for_stage(stage).checks):
            loc: tuple[str | int, ...] = ("gates", stage, "checks", index, check.name)
            for metric in check.metrics():
                if metric in metrics:
                    continue
                params = check.params
                if isinstance(params, NoSignificantDegradation):
                    where = (*loc, "metrics", params.metrics.index(metric))
                else:
                    where = (*loc, "metric")
                message = (
                    f"{metric!r} is not one of the routine's metrics; valid: {_valid(metrics)}"
                )
                found.append((where, metric, message))
    return found


def routine_files(root: Path | str) -> list[Path]:
    """Every ``<root>/<routine>/routine.yaml``, sorted by routine folder."""
    return sorted(Path(root).glob(f"*/{ROUTINE_FILE}"))


def experiment_files(routine: RoutineSpec | Path | str) -> list[Path]:
    """Every experiment spec in a routine's folder (the YAML files other than routine.yaml)."""
    folder = routine.folder if isinstance(routine, RoutineSpec) else Path(routine)
    if folder is None:
        return []
    files = [*folder.glob("*.yaml"), *folder.glob("*.yml")]
    return sorted(path for path in files if path.name != ROUTINE_FILE)


# --------------------------------------------------------------------------- experiment loading


def load_experiment(path: Path | str, routine: RoutineSpec | None = None) -> ExperimentSpec:
    """Read and validate an experiment spec against its routine.

    ``routine`` defaults to the routine.yaml in the experiment's folder. The
    estimator is built once to prove the spec is usable.
    """
    path = Path(path)
    text = _read_text(path, "experiment spec")
    if routine is None:
        routine = load_routine(path.parent)
    return parse_experiment(text, file=path, routine=routine)


def parse_experiment(text: str, *, file: Path | str, routine: RoutineSpec) -> ExperimentSpec:
    """Validate the experiment spec ``text`` (as if read from ``file``) against ``routine``."""
    file = Path(file)
    shown = _display(file)
    spec, problems, located = _read_yaml(text, shown, ExperimentSpec)
    if spec is not None:
        found = _experiment_cross_problems(spec, routine)
        if _has(spec, "estimator"):
            found += _build(spec, routine.folder or file.parent)[1]
        for loc, value, message in found:
            problems.append(SpecProblem(shown, _dotted(loc), value, message, located.line(loc)))
    if problems:
        raise SpecError(problems)
    spec = spec.model_copy(
        update={
            "features": list(routine.features) if spec.features is None else spec.features,
            "training": spec.training or routine.training,
        }
    )
    spec._file = file
    return spec


def _experiment_cross_problems(spec: ExperimentSpec, routine: RoutineSpec) -> list[_Problem]:
    """Problems between the experiment and its routine; ``spec`` may be partial."""
    found: list[_Problem] = []

    def flag(loc: tuple[str | int, ...], value: Any, message: str) -> None:
        found.append((loc, value, message))

    if _has(spec, "routine") and spec.routine != routine.name:
        flag(
            ("routine",),
            spec.routine,
            f"{spec.routine!r} is not this experiment's routine; valid: {routine.name}",
        )
    if _has(spec, "features") and spec.features is not None:
        if not spec.features:
            flag(
                ("features",),
                [],
                "[] selects no feature; valid: leave 'features' out for all, "
                f"or some of {_valid(routine.features)}",
            )
        for index, feature in enumerate(spec.features):
            if feature not in routine.features:
                flag(
                    ("features", index),
                    feature,
                    f"{feature!r} is not a feature of routine {routine.name!r}; "
                    f"valid: {_valid(routine.features)}",
                )
        found += _duplicates(spec.features, "features")
    if _has(spec, "training") and spec.training is not None:
        for name in ("holdout", "cycles"):
            period = getattr(routine, name)
            if spec.training.overlaps(period):
                flag(
                    ("training",),
                    str(spec.training),
                    f"{spec.training} overlaps the routine's {name} {period}; "
                    f"valid: a training period outside {name}",
                )
    return found


# --------------------------------------------------------------------------- estimators


def _pickle_by_value(module: ModuleType) -> None:
    # A module loaded from a routine folder has a private name no other process can
    # import: anything it defines must travel inside the pickle, not by reference.
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - cloudpickle comes with MLflow
        return
    with contextlib.suppress(ValueError):
        cloudpickle.register_pickle_by_value(module)


_IMPORT_LOCK = threading.Lock()


def _import_from_folder(folder: Path, module: str) -> ModuleType | None:
    """Import ``module`` from a routine's folder under a name unique to that file, or None."""
    file = folder.joinpath(*module.split(".")).with_suffix(".py")
    if not file.is_file():
        return None
    stat = file.stat()
    tag = hashlib.sha256(f"{file.resolve()}|{stat.st_mtime_ns}|{stat.st_size}".encode())
    name = f"_numex_routine_{tag.hexdigest()[:16]}_{module.replace('.', '_')}"
    # Serialised so that no thread sees a module another thread is still executing.
    with _IMPORT_LOCK:
        if name in sys.modules:
            return sys.modules[name]
        loader_spec = importlib.util.spec_from_file_location(name, file)
        loaded = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = loaded
        try:
            loader_spec.loader.exec_module(loaded)
        except BaseException:
            del sys.modules[name]
            raise
        _pickle_by_value(loaded)
    return loaded


class _Unresolved(Exception):
    """A ``module:function`` or dotted path that does not lead to a usable object."""


def _resolve_callable(ref: str, folder: Path | None) -> Callable[..., Any]:
    """``module:function``, looked up in the routine's folder first, then importable modules."""
    module_name, _, function_name = ref.partition(":")
    where = f"{_display(folder)}/" if folder else "the routine's folder"
    try:
        module = _import_from_folder(folder, module_name) if folder else None
    except Exception as error:
        raise _Unresolved(
            f"importing {module_name!r} from {where} failed: {_describe(error)}"
        ) from error
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise _Unresolved(
                f"no module {module_name!r} in {where} and none importable ({error}); "
                "valid: module:function with module.py in the routine's folder or an "
                "importable module"
            ) from error
    function = getattr(module, function_name, None)
    if not callable(function):
        functions = sorted(
            name
            for name, value in vars(module).items()
            if inspect.isfunction(value) and not name.startswith("_")
        )
        raise _Unresolved(
            f"module {module_name!r} has no function {function_name!r}; "
            f"valid: {_valid(functions) or 'none found'}"
        )
    return function


def _import_class(path: str) -> type:
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise _Unresolved(
            f"cannot import module {module_name!r} ({error}); valid: a dotted path to an "
            "estimator class, e.g. sklearn.linear_model.Ridge"
        ) from error
    found = getattr(module, class_name, None)
    if found is None:
        import difflib

        names = [name for name in dir(module) if not name.startswith("_")]
        close = difflib.get_close_matches(class_name, names, n=3)
        hint = f"did you mean {_valid(f'{module_name}.{name}' for name in close)}?" if close else ""
        raise _Unresolved(
            f"module {module_name!r} has no {class_name!r}; valid: a class in {module_name}"
            + (f"; {hint}" if hint else "")
        )
    if not inspect.isclass(found):
        raise _Unresolved(f"{type(found).__name__} is not a class; valid: an estimator class")
    return found


def _is_estimator(obj: Any, *, needs_predict: bool) -> bool:
    methods = ("fit", "predict") if needs_predict else ("fit",)
    return all(callable(getattr(obj, method, None)) for method in methods)


class _Builder:
    """Builds estimators from ``{class|factory, params}``, collecting problems with their loc."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.problems: list[_Problem] = []

    def flag(self, loc: tuple[str | int, ...], value: Any, message: str) -> None:
        self.problems.append((loc, value, message))

    def estimator(self, spec: Mapping[str, Any], loc: tuple[str | int, ...], top: bool) -> Any:
        params = self.params(spec.get("params") or {}, (*loc, "params"))
        if spec.get("class") is not None:
            return self._from_class(spec["class"], params, loc, top)
        return self._from_factory(spec["factory"], params, loc)

    def params(self, params: Any, loc: tuple[str | int, ...]) -> Any:
        """Build every nested ``{class: ..., params: ...}`` found inside ``params``."""
        if isinstance(params, Mapping):
            if "class" in params and set(params) <= {"class", "params"}:
                if not isinstance(params["class"], str) or not _DOTTED.match(params["class"]):
                    self.flag(
                        (*loc, "class"),
                        params["class"],
                        f"{_show(params['class'])} is not a dotted path; valid: "
                        "package.module.Class, e.g. sklearn.preprocessing.StandardScaler",
                    )
                    return None
                return self.estimator(params, loc, top=False)
            built = {}
            for key, value in params.items():
                if key == "random_state":
                    self.flag(
                        (*loc, key),
                        value,
                        "the seed is set once, by the top-level 'seed' field; "
                        "valid: remove random_state from params",
                    )
                built[key] = self.params(value, (*loc, key))
            return built
        if isinstance(params, list):
            built = [self.params(item, (*loc, index)) for index, item in enumerate(params)]
            # A [name, estimator] pair (a Pipeline step, a ColumnTransformer entry)
            # is a tuple in scikit-learn; YAML can only write it as a list.
            if any(_is_estimator(item, needs_predict=False) for item in built):
                return tuple(built)
            return built
        return params

    def _from_class(
        self, path: str, params: dict[str, Any], loc: tuple[str | int, ...], top: bool
    ) -> Any:
        try:
            cls = _import_class(path)
        except _Unresolved as error:
            self.flag((*loc, "class"), path, str(error))
            return None
        if not _is_estimator(cls, needs_predict=top):
            needs = "fit and predict" if top else "fit"
            self.flag(
                (*loc, "class"),
                path,
                f"{cls.__name__} is not an estimator (it needs {needs}); valid: a "
                "scikit-learn style estimator class, e.g. sklearn.linear_model.Ridge",
            )
            return None
        accepted = _init_parameters(cls)
        if accepted is not None:
            unknown = [name for name in params if name not in accepted]
            for name in unknown:
                self.flag(
                    (*loc, "params", name),
                    params[name],
                    f"{name!r} is not a parameter of {path}; valid: {_valid(sorted(accepted))}",
                )
            if unknown:
                return None
        try:
            estimator = cls(**params)
        except Exception as error:
            self.flag((*loc, "params"), params, f"{path}(...) failed: {_describe(error)}")
            return None
        self._check_values(estimator, (*loc, "params"))
        return estimator

    def _from_factory(self, ref: str, params: dict[str, Any], loc: tuple[str | int, ...]) -> Any:
        try:
            factory = _resolve_callable(ref, self.folder)
        except _Unresolved as error:
            self.flag((*loc, "factory"), ref, str(error))
            return None
        try:
            estimator = factory(**params)
        except Exception as error:
            self.flag((*loc, "factory"), ref, f"calling {ref}(...) failed: {_describe(error)}")
            return None
        if not _is_estimator(estimator, needs_predict=True):
            self.flag(
                (*loc, "factory"),
                ref,
                f"{ref} returned a {type(estimator).__name__}, which is not an estimator "
                "(it needs fit and predict); valid: a factory returning one",
            )
            return None
        return estimator

    def _check_values(self, estimator: Any, loc: tuple[str | int, ...]) -> None:
        # scikit-learn checks parameter values only in fit; ask it now so a bad value
        # is reported when the spec is loaded.
        validate = getattr(estimator, "_validate_params", None)
        if validate is None:
            return
        try:
            validate()
        except (ValueError, TypeError) as error:
            named = re.search(r"The '(\w+)' parameter", str(error))
            if named and named.group(1) in getattr(estimator, "__dict__", {}):
                name = named.group(1)
                self.flag((*loc, name), getattr(estimator, name), str(error))
            else:
                self.flag(loc, None, str(error))
        except Exception:  # pragma: no cover - a private API that may change
            pass


def _init_parameters(cls: type) -> set[str] | None:
    """The keyword parameters ``cls`` accepts, or None when it takes any (``**kwargs``)."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def _apply_seed(estimator: Any, seed: int) -> None:
    """Set ``seed`` on every ``random_state`` the estimator (or any nested step) has."""
    get_params = getattr(estimator, "get_params", None)
    if get_params is None:
        if hasattr(estimator, "random_state"):
            estimator.random_state = seed
        return
    names = [
        name
        for name in get_params(deep=True)
        if name == "random_state" or name.endswith("__random_state")
    ]
    if names:
        estimator.set_params(**dict.fromkeys(names, seed))


def _build(spec: ExperimentSpec, folder: Path | None) -> tuple[Any, list[_Problem]]:
    builder = _Builder(folder)
    raw = spec.estimator.model_dump(by_alias=True, exclude_none=True)
    estimator = builder.estimator(raw, ("estimator",), top=True)
    if estimator is not None and not builder.problems:
        _apply_seed(estimator, spec.seed)
    return estimator, builder.problems


def build_estimator(experiment: ExperimentSpec, routine_dir: Path | str | None = None) -> Any:
    """A fresh, unfitted estimator for ``experiment``, its ``random_state`` set to the seed.

    ``class`` is imported by dotted path and instantiated with ``params`` (a
    nested ``{class, params}`` inside params is built too, e.g. Pipeline steps);
    ``factory`` is resolved in ``routine_dir`` (default: the experiment's
    folder) first, then among importable modules, and called with ``params``.
    """
    folder = Path(routine_dir) if routine_dir is not None else experiment.folder
    estimator, problems = _build(experiment, folder)
    if problems:
        shown = _display(experiment.file) if experiment.file else f"<experiment {experiment.name}>"
        raise SpecError([SpecProblem(shown, _dotted(loc), v, m) for loc, v, m in problems])
    return estimator


def train(
    estimator: Any,
    frame: pd.DataFrame,
    features: Sequence[str],
    target: str,
    seed: int | None = None,
) -> Any:
    """Fit ``estimator`` on ``frame[features]`` → ``frame[target]`` and return it.

    Rows whose target is missing (not yet observed) are left out. With
    ``seed``, every ``random_state`` is set first, so equal seeds give equal
    models.
    """
    missing = [column for column in (*features, target) if column not in frame.columns]
    if missing:
        raise ValueError(
            f"training frame lacks column(s) {_valid(missing)}; it has {_valid(frame.columns)}"
        )
    if seed is not None:
        _apply_seed(estimator, seed)
    rows = frame[target].notna()
    estimator.fit(frame.loc[rows, list(features)], frame.loc[rows, target])
    return estimator


# --------------------------------------------------------------------------- data


def _declared_columns(routine: RoutineSpec) -> dict[str, str]:
    """Each column the spec declares → the first field declaring it."""
    declared: dict[str, str] = {}
    fields: list[tuple[str, str]] = [("time_column", routine.time_column)]
    fields += [(f"case_keys[{i}]", column) for i, column in enumerate(routine.case_keys)]
    fields += [("target", routine.target)]
    fields += [(f"features[{i}]", column) for i, column in enumerate(routine.features)]
    fields += [
        (f"segments[{i}].column", segment.column)
        for i, segment in enumerate(routine.segments)
        if segment.column is not None
    ]
    for field, column in fields:
        declared.setdefault(column, field)
    return declared


def load_routine_data(routine: RoutineSpec) -> pd.DataFrame:
    """The routine's data, every declared column checked, the time column as date-times.

    Rows are sorted by the case keys. A missing file, a failing loader or a
    missing column raises :class:`SpecError` naming the source, the missing
    columns and the columns that are there.
    """
    file = _display(routine.file) if routine.file else f"<routine {routine.name}>"
    folder = routine.folder or Path.cwd()
    source = routine.data.source

    def fail(message: str, field: str = "data.source", value: Any = source) -> SpecError:
        return SpecError([SpecProblem(file, field, value, message)])

    if routine.data.is_file:
        path = Path(source) if Path(source).is_absolute() else folder / source
        described = _display(path)
        if not path.is_file():
            raise fail(f"file {described} does not exist; valid: a data file in {_display(folder)}")
        try:
            read = pd.read_csv if path.suffix.lower() == ".csv" else pd.read_parquet
            frame = read(path)
        except Exception as error:
            raise fail(f"cannot read {described}: {_describe(error)}") from error
    else:
        described = source
        try:
            loader = _resolve_callable(source, folder)
        except _Unresolved as error:
            raise fail(str(error)) from error
        try:
            frame = loader()
        except Exception as error:
            raise fail(f"{source}() failed: {_describe(error)}") from error
        if not isinstance(frame, pd.DataFrame):
            raise fail(f"{source}() returned a {type(frame).__name__}; valid: a pandas DataFrame")

    present = _valid(frame.columns)
    problems = [
        SpecProblem(
            file,
            field,
            column,
            f"column {column!r} is not in the data from {described}; columns present: {present}",
        )
        for column, field in _declared_columns(routine).items()
        if column not in frame.columns
    ]
    if problems:
        raise SpecError(problems)
    frame = frame.copy()
    try:
        frame[routine.time_column] = pd.to_datetime(frame[routine.time_column])
    except (ValueError, TypeError) as error:
        raise fail(
            f"column {routine.time_column!r} of {described} is not date-times ({error})",
            "time_column",
            routine.time_column,
        ) from error
    frame = frame.sort_values(list(routine.case_keys), kind="stable").reset_index(drop=True)
    keys = case_keys(frame, routine)
    repeated = keys[keys.duplicated()]
    if len(repeated):
        raise fail(
            f"{len(repeated)} row(s) of {described} repeat a case key, e.g. {repeated.iloc[0]!r}; "
            "valid: case keys that identify one row each",
            "case_keys",
            list(routine.case_keys),
        )
    return frame


def data_digest(frame: pd.DataFrame) -> str:
    """``sha256:<hex>`` of a frame's column names and values (column order does not matter;
    row order does). Date-times are hashed at nanosecond resolution, whatever their unit."""
    columns = sorted(frame.columns, key=str)
    normal = pd.DataFrame(index=range(len(frame)))
    for column in columns:
        values = frame[column].reset_index(drop=True)
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        if pd.api.types.is_datetime64_any_dtype(values.dtype):
            values = values.astype("datetime64[ns]")
        normal[str(column)] = values
    digest = hashlib.sha256(json.dumps([str(column) for column in columns]).encode())
    if columns:
        hashed = pd.util.hash_pandas_object(normal, index=False)
        digest.update(hashed.to_numpy(dtype="uint64").tobytes())
    digest.update(str(len(frame)).encode())
    return f"sha256:{digest.hexdigest()}"


def spec_digest(spec: BaseModel) -> str:
    """``sha256:<hex>`` of the parsed spec's canonical JSON (sorted keys): comments,
    key order and formatting in the YAML do not change it."""
    canonical = json.dumps(
        spec.model_dump(mode="json", by_alias=True),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return f"sha256:{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"


def _time_text(value: Any) -> str:
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        raise ValueError("a case's time is missing")
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.strftime(CASE_TIME_FORMAT)


def _key_text(value: Any) -> str:
    if isinstance(value, datetime | date | np.datetime64):
        return _time_text(value)
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            raise ValueError("a case key is missing")
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if value is None or value is pd.NA or value is pd.NaT:
        raise ValueError("a case key is missing")
    return str(value)


def _key_texts(values: pd.Series, is_time: bool) -> pd.Series:
    if is_time or pd.api.types.is_datetime64_any_dtype(values.dtype):
        times = pd.to_datetime(values)
        if times.isna().any():
            raise ValueError("a case's time is missing")
        if isinstance(times.dtype, pd.DatetimeTZDtype):
            times = times.dt.tz_convert("UTC").dt.tz_localize(None)
        return times.dt.strftime(CASE_TIME_FORMAT).astype(object)
    if pd.api.types.is_integer_dtype(values.dtype) and not values.isna().any():
        return values.astype("int64").astype(str).astype(object)
    return values.map(_key_text).astype(object)


def case_key(row: Mapping[str, Any] | pd.Series, routine: RoutineSpec) -> str:
    """The canonical text of one case's key, e.g. ``2014-01-01T00:00:00|1``.

    Values are joined with ``|`` in the order of ``case_keys``; times are ISO 8601
    to the second (UTC if zone-aware), integral numbers are written as integers.
    """
    return "|".join(
        _time_text(row[column]) if column == routine.time_column else _key_text(row[column])
        for column in routine.case_keys
    )


def case_keys(frame: pd.DataFrame, routine: RoutineSpec) -> pd.Series:
    """:func:`case_key` for every row of ``frame``, vectorised; same index as ``frame``."""
    parts = [
        _key_texts(frame[column], column == routine.time_column) for column in routine.case_keys
    ]
    keys = parts[0]
    for part in parts[1:]:
        keys = keys + "|" + part
    return pd.Series(keys.to_numpy(dtype=object), index=frame.index, name="case_key")


def segment_values(frame: pd.DataFrame, routine: RoutineSpec) -> pd.DataFrame:
    """One column per segment of the routine, same index as ``frame``.

    ``season`` is DJF/MAM/JJA/SON, ``month`` 1–12 and ``hour-of-day`` 0–23, all
    from the time column; a column segment is the column's values.
    """
    times = None
    columns: dict[str, pd.Series] = {}
    for segment in routine.segments:
        if segment.column is not None:
            columns[segment.name] = frame[segment.column]
            continue
        if times is None:
            times = pd.to_datetime(frame[routine.time_column])
        if segment.derive == "season":
            columns[segment.name] = times.dt.month.map(SEASON_OF_MONTH)
        elif segment.derive == "month":
            columns[segment.name] = times.dt.month
        else:
            columns[segment.name] = times.dt.hour
    return pd.DataFrame(columns, index=frame.index)


def split(
    frame: pd.DataFrame,
    routine: RoutineSpec,
    period: Period | tuple[Any, Any],
) -> pd.DataFrame:
    """The rows of ``frame`` whose time falls in ``period``.

    A :class:`Period` includes both ends (a date end includes its whole day); a
    ``(start, end)`` pair is a half-open window ``[start, end)``, as a cycle's.
    """
    times = pd.to_datetime(frame[routine.time_column])
    if isinstance(period, Period):
        mask = (times >= period.first) & (times <= period.last)
    else:
        start, end = (pd.Timestamp(bound) for bound in period)
        mask = (times >= start) & (times < end)
    return frame.loc[mask]


def training_frame(
    frame: pd.DataFrame, routine: RoutineSpec, experiment: ExperimentSpec | None = None
) -> pd.DataFrame:
    """The rows to train on: the experiment's training period, else the routine's."""
    period = (experiment.training if experiment else None) or routine.training
    return split(frame, routine, period)


def holdout_frame(frame: pd.DataFrame, routine: RoutineSpec) -> pd.DataFrame:
    """The rows of the routine's holdout period (offline scores)."""
    return split(frame, routine, routine.holdout)


def cycle_windows(routine: RoutineSpec) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Every cycle's half-open window ``[start, end)``, from ``cycles.start`` every
    ``cycles.length`` while the window starts inside the cycle period."""
    step, start, last = routine.cycles.step, routine.cycles.first, routine.cycles.last
    windows = []
    while start <= last:
        windows.append((start, start + step))
        start = start + step
    return windows


def cycle_window(routine: RoutineSpec, moment: Any) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The cycle window ``[start, end)`` holding ``moment`` (which must lie in the cycle period)."""
    moment = pd.Timestamp(moment)
    cycles = routine.cycles
    if not cycles.first <= moment <= cycles.last:
        raise ValueError(f"{moment.isoformat()} is outside the cycle period {cycles}")
    index = (moment - cycles.first) // cycles.step
    start = cycles.first + index * cycles.step
    return start, start + cycles.step


__all__ = [
    "CASE_TIME_FORMAT",
    "GATED_STAGES",
    "GATE_CHECKS",
    "METRICS",
    "METRICS_BY_TASK",
    "SEGMENT_DERIVATIONS",
    "TASKS",
    "Cycles",
    "DataSource",
    "EstimatorSpec",
    "ExperimentSpec",
    "Gate",
    "GateCheck",
    "Gates",
    "NoSignificantDegradation",
    "OfflineNotWorse",
    "Period",
    "RoutineSpec",
    "Segment",
    "SignificantImprovement",
    "SpecError",
    "SpecProblem",
    "build_estimator",
    "case_key",
    "case_keys",
    "cycle_window",
    "cycle_windows",
    "data_digest",
    "experiment_files",
    "holdout_frame",
    "load_experiment",
    "load_routine",
    "load_routine_data",
    "parse_experiment",
    "parse_routine",
    "routine_files",
    "segment_values",
    "spec_digest",
    "split",
    "train",
    "training_frame",
]
