"""Scorecard: a candidate against a reference, metric × segment, with significance.

:func:`build_scorecard` takes a DataFrame of paired cases — ``cycle``,
``case``, ``candidate``, ``reference``, ``observation`` and any segment
columns — and returns a :class:`Scorecard`: for every metric and every grid
column (``overall`` and one per value of each segment column, e.g.
``lead=1``, ``season=DJF``) a :class:`Cell` with the scores, the change, the
paired test of :mod:`numex.scoring.significance` on the per-cycle differences
``d_t = L_C(t) − L_R(t)``, and a scorecard symbol.

How it stays fast: every row gets one integer code for its
cycle × segment-value combination; each per-case quantity a metric needs
(``e``, ``|e|``, ``e²``, …) is summed per code with one ``np.bincount``; grid
columns are marginal sums of that array. Only the (small) per-cycle series
of each cell is looked at cell by cell.

A pair with a NaN candidate, reference or observation is *excluded and
counted* (:class:`Exclusions`, ``Cell.n_excluded``), never averaged.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from numex.scoring.metrics import (
    QUANTITIES,
    Metric,
    canonical_name,
    check_observations,
    get_metric,
)
from numex.scoring.significance import (
    DEFAULT_LEVELS,
    DEFAULT_METHOD,
    Interval,
    PairedTest,
    check_levels,
    check_method,
    familywise_level,
    paired_test,
    sidak_level,
)

OVERALL = "overall"
#: Column names with a meaning of their own; they cannot be segments.
PAIR_COLUMNS = ("cycle", "case", "candidate", "reference", "observation")
#: Default floor on the effective sample size below which a cell gets no verdict.
DEFAULT_FLOOR = 10.0

BETTER_STRONG, BETTER, NOT_SIGNIFICANT, WORSE, WORSE_STRONG, BLANK = "▲", "△", "·", "▽", "▼", ""
#: Above this many cycle × segment-value combinations, sum per segment column instead.
_MAX_CROSSED_GROUPS = 50_000_000


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when missing, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _label(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return "missing"
    if isinstance(value, pd.Timestamp | datetime | date):
        return value.isoformat()
    return str(value)


def _json_value(value: Any) -> Any:
    """A cycle identifier as a JSON-native value (int, float, str)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return _label(value)


# --- the result --------------------------------------------------------------------


@dataclass(frozen=True)
class Exclusions:
    """Pairs left out because a value is missing (NaN).

    A row missing several values counts under each reason; ``total`` counts rows.
    """

    candidate_missing: int = 0
    reference_missing: int = 0
    observation_missing: int = 0
    total: int = 0


@dataclass(frozen=True)
class FamilyLevel:
    """Multiple-testing view of one confidence level over the grid's ``m`` tested cells.

    ``per_cell_level``: the Šidák per-cell level that keeps the family-wise
    level at ``level`` (``level^(1/m)``). ``familywise_if_unadjusted``: the
    family-wise level when every cell is tested at ``level`` (``level^m``).
    """

    level: float
    per_cell_level: float | None
    familywise_if_unadjusted: float | None


@dataclass(frozen=True)
class Family:
    """The grid seen as one family of tests: ``size`` cells that carry a verdict."""

    size: int
    levels: tuple[FamilyLevel, ...] = ()

    def per_cell_level(self, level: float) -> float | None:
        """The Šidák-adjusted per-cell level for family-wise ``level``."""
        return sidak_level(level, self.size) if self.size else None


@dataclass(frozen=True)
class Cell:
    """One metric in one grid column.

    Scores are over all paired cases of the cell; the test is on the per-cycle
    differences ``d_t`` (``mean_difference`` is ``d̄``). ``intervals`` are in
    ``d`` units, ``intervals_percent`` the same bounds as percent of the
    reference (empty where that means nothing, e.g. bias). ``direction`` is the
    sign of ``d̄`` read through the metric ("better"/"worse"/None when 0);
    ``verdict`` is the direction when significant at the lowest level and the
    cell has enough effective cycles, else None. ``symbol``: ▲/▼ significant at
    the highest level, △/▽ at the lowest, · not significant, "" when
    ``n_eff`` is below the floor or unknown. ▲ and △ always mean the
    candidate is better.
    """

    metric: str
    column: str
    segment: str | None
    value: str | None
    n_cases: int
    n_cycles: int
    n_excluded: int
    candidate_score: float | None
    reference_score: float | None
    change: float | None
    change_percent: float | None
    mean_difference: float | None
    sd_difference: float | None
    standard_error: float | None
    r1: float | None
    r2: float | None
    n_eff: float | None
    t_statistic: float | None
    dof: int | None
    p_value: float | None
    intervals: tuple[Interval, ...]
    intervals_percent: tuple[Interval, ...]
    direction: str | None
    symbol: str
    verdict: str | None

    @property
    def assessed(self) -> bool:
        """Whether the cell carries a verdict at all (``n_eff`` reached the floor)."""
        return self.symbol != BLANK

    def significant(self, level: float) -> bool:
        """Assessed and ``p < 1 − level``."""
        return self.assessed and self.p_value is not None and self.p_value < 1.0 - level

    def interval(self, level: float) -> Interval | None:
        return next((i for i in self.intervals if math.isclose(i.level, level)), None)


@dataclass(frozen=True)
class CycleSeries:
    """Per-cycle values of one metric over the overall cell, for a chart.

    ``difference[i] = candidate[i] − reference[i]`` is ``d_t``; ``intervals``
    is the confidence band of ``d̄`` (the overall cell's intervals).
    """

    metric: str
    cycles: tuple[Any, ...]
    n_cases: tuple[int, ...]
    candidate: tuple[float, ...]
    reference: tuple[float, ...]
    difference: tuple[float, ...]
    mean_difference: float | None
    intervals: tuple[Interval, ...]


@dataclass(frozen=True)
class Scorecard:
    """A candidate against a reference: the grid, its family, and per-cycle series.

    ``meta`` is whatever the caller passed (routine, candidate and reference
    ids, period, …); it is part of the digest.
    """

    metrics: tuple[str, ...]
    segments: tuple[str, ...]
    columns: tuple[str, ...]
    method: str
    h: int
    floor: float
    levels: tuple[float, ...]
    n_cases: int
    n_cycles: int
    excluded: Exclusions
    family: Family
    cells: tuple[Cell, ...]
    series: tuple[CycleSeries, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def has_metric(self, metric: str) -> bool:
        """Whether the grid has ``metric`` (aliases such as ``logloss`` count)."""
        return canonical_name(metric) in self.metrics

    def cell(self, metric: str, column: str = OVERALL) -> Cell:
        """The cell of ``metric`` in grid column ``column`` (e.g. ``"lead=1"``)."""
        metric = canonical_name(metric)
        for cell in self.cells:
            if cell.metric == metric and cell.column == column:
                return cell
        raise KeyError(
            f"no cell {metric!r} × {column!r}; metrics: {', '.join(self.metrics)}; "
            f"columns: {', '.join(self.columns)}"
        )

    def cells_of(self, metric: str) -> tuple[Cell, ...]:
        """Every cell of ``metric``, overall first."""
        metric = canonical_name(metric)
        return tuple(cell for cell in self.cells if cell.metric == metric)

    def cycle_series(self, metric: str) -> CycleSeries:
        """The per-cycle values of ``metric`` over the overall cell."""
        metric = canonical_name(metric)
        for series in self.series:
            if series.metric == metric:
                return series
        raise KeyError(f"no series for {metric!r}; metrics: {', '.join(self.metrics)}")

    # --- serialisation -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists, numbers, strings and None (JSON-ready)."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scorecard:
        """The scorecard :meth:`to_dict` (or the parsed canonical JSON) describes."""

        def intervals(items: Sequence[Mapping[str, Any]]) -> tuple[Interval, ...]:
            return tuple(Interval(i["level"], i["low"], i["high"]) for i in items)

        cells = []
        for c in data["cells"]:
            values = dict(c)
            values["intervals"] = intervals(c["intervals"])
            values["intervals_percent"] = intervals(c["intervals_percent"])
            cells.append(Cell(**values))
        series = []
        for s in data["series"]:
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in s.items()}
            values["intervals"] = intervals(s["intervals"])
            series.append(CycleSeries(**values))
        family = data["family"]
        return cls(
            metrics=tuple(data["metrics"]),
            segments=tuple(data["segments"]),
            columns=tuple(data["columns"]),
            method=data["method"],
            h=data["h"],
            floor=data["floor"],
            levels=tuple(data["levels"]),
            n_cases=data["n_cases"],
            n_cycles=data["n_cycles"],
            excluded=Exclusions(**data["excluded"]),
            family=Family(
                size=family["size"],
                levels=tuple(FamilyLevel(**level) for level in family["levels"]),
            ),
            cells=tuple(cells),
            series=tuple(series),
            meta=dict(data.get("meta") or {}),
        )

    def to_canonical_json(self) -> str:
        """Deterministic JSON: sorted keys, no whitespace, floats to 12 significant
        digits, NaN/±inf as null, UTF-8 (the symbols are not escaped)."""
        return json.dumps(
            _canonical(self.to_dict()),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )

    def digest(self) -> str:
        """``"sha256:<hex>"`` of the canonical JSON: the scorecard's content digest."""
        return "sha256:" + hashlib.sha256(self.to_canonical_json().encode("utf-8")).hexdigest()

    def to_csv(self) -> str:
        """One row per cell; intervals as ``ci<level>_low``/``_high`` (+ ``_percent``)."""
        names = [
            "metric",
            "column",
            "segment",
            "value",
            "n_cases",
            "n_cycles",
            "n_excluded",
            "candidate_score",
            "reference_score",
            "change",
            "change_percent",
            "mean_difference",
            "sd_difference",
            "standard_error",
            "r1",
            "r2",
            "n_eff",
            "t_statistic",
            "dof",
            "p_value",
        ]
        tags = [f"ci{level * 100:g}" for level in self.levels]
        for tag in tags:
            names += [f"{tag}_low", f"{tag}_high", f"{tag}_low_percent", f"{tag}_high_percent"]
        names += ["symbol", "verdict"]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(names)
        for cell in self.cells:
            row = [_csv_value(getattr(cell, name)) for name in names[:20]]
            for level in self.levels:
                absolute = cell.interval(level)
                percent = next(
                    (i for i in cell.intervals_percent if math.isclose(i.level, level)), None
                )
                for interval in (absolute, percent):
                    row += [_csv_value(interval and interval.low)]
                    row += [_csv_value(interval and interval.high)]
            row += [cell.symbol, cell.verdict or ""]
            writer.writerow(row)
        return buffer.getvalue()


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {name: _plain(getattr(obj, name)) for name in obj.__dataclass_fields__}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _canonical(obj: Any) -> Any:
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        rounded = float(f"{obj:.12g}")
        return 0.0 if rounded == 0 else rounded  # no "-0.0"
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    return obj


# --- grouping ----------------------------------------------------------------------


class _Grouping:
    """Sums of per-row weights per cycle × value, for overall and each segment column.

    ``sums(w)`` returns one array per grid axis: ``(T, 1)`` for overall and
    ``(T, k_j)`` for segment column ``j``. Normally every row gets one code for
    its full cycle × segment-values combination and one ``bincount`` gives
    everything (axes are marginal sums); with too many combinations it falls
    back to one ``bincount`` per axis.
    """

    def __init__(
        self, cycles: np.ndarray, n_cycles: int, codes: list[np.ndarray], sizes: list[int]
    ):
        self.n_cycles = n_cycles
        self.sizes = sizes
        combos = n_cycles * math.prod(sizes)
        self.crossed = combos <= max(4 * cycles.size, 1 << 16) and combos <= _MAX_CROSSED_GROUPS
        if self.crossed:
            code = cycles.astype(np.int64, copy=True)
            for segment_codes, size in zip(codes, sizes, strict=True):
                code *= size
                code += segment_codes
            self.codes = [code]
        else:
            self.codes = [cycles.astype(np.int64)] + [
                cycles.astype(np.int64) * size + segment_codes
                for segment_codes, size in zip(codes, sizes, strict=True)
            ]

    def subset(self, mask: np.ndarray) -> _Grouping:
        other = object.__new__(_Grouping)
        other.n_cycles, other.sizes, other.crossed = self.n_cycles, self.sizes, self.crossed
        other.codes = [code[mask] for code in self.codes]
        return other

    def sums(self, weights: np.ndarray | None = None) -> list[np.ndarray]:
        t = self.n_cycles
        if self.crossed:
            groups = t * math.prod(self.sizes)
            total = np.bincount(self.codes[0], weights, minlength=groups)
            total = total.reshape(t, *self.sizes)
            axes = [total.reshape(t, math.prod(self.sizes)).sum(axis=1)[:, None]]
            every = set(range(1, len(self.sizes) + 1))
            for j in range(1, len(self.sizes) + 1):
                axes.append(total.sum(axis=tuple(sorted(every - {j}))) if len(every) > 1 else total)
            return axes
        axes = [np.bincount(self.codes[0], weights, minlength=t)[:, None]]
        for code, size in zip(self.codes[1:], self.sizes, strict=True):
            axes.append(np.bincount(code, weights, minlength=t * size).reshape(t, size))
        return axes


def _factorize(values: pd.Series) -> tuple[np.ndarray, list[Any]]:
    """Integer codes 0…k−1 and the sorted distinct values (missing is a value too)."""
    try:
        codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=False)
    except TypeError:  # values of mixed types that do not sort
        codes, uniques = pd.factorize(values, sort=False, use_na_sentinel=False)
    return codes.astype(np.int64, copy=False), list(uniques)


# --- building ----------------------------------------------------------------------


def _float_column(pairs: pd.DataFrame, name: str) -> np.ndarray:
    try:
        return pairs[name].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"column {name!r} must hold numbers (NaN where missing): {error}"
        ) from None


def _validate(
    pairs: pd.DataFrame,
    metrics: Sequence[str],
    segments: Sequence[str],
    floor: float,
    meta: Mapping[str, Any] | None,
) -> list[Metric]:
    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics:
        raise ValueError("metrics: give at least one metric, the primary first")
    duplicates = sorted({m for m in metrics if list(metrics).count(m) > 1})
    if duplicates:
        raise ValueError(f"metrics: {', '.join(duplicates)} listed more than once")
    chosen = [get_metric(name) for name in metrics]
    missing = [c for c in ("cycle", "candidate", "reference", "observation") if c not in pairs]
    if missing:
        raise ValueError(
            f"pairs: missing column(s) {', '.join(missing)}; need cycle, case, candidate, "
            f"reference, observation (+ segment columns)"
        )
    for segment in segments:
        if segment in PAIR_COLUMNS:
            raise ValueError(f"segments: {segment!r} is a pair column, not a segment")
        if segment not in pairs:
            raise ValueError(
                f"segments: no column {segment!r} in the pairs; columns: "
                f"{', '.join(map(str, pairs.columns))}"
            )
    if len(set(segments)) != len(segments):
        raise ValueError("segments: a segment column is listed more than once")
    if not (isinstance(floor, int | float) and math.isfinite(floor) and floor >= 0):
        raise ValueError(f"floor: {floor!r} is not a non-negative number of effective cycles")
    try:
        json.dumps(dict(meta or {}), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"meta must be JSON-serialisable: {error}") from None
    return chosen


def build_scorecard(
    pairs: pd.DataFrame,
    metrics: Sequence[str],
    segments: Sequence[str] = (),
    *,
    method: str = DEFAULT_METHOD,
    floor: float = DEFAULT_FLOOR,
    levels: Sequence[float] = DEFAULT_LEVELS,
    h: int = 1,
    meta: Mapping[str, Any] | None = None,
) -> Scorecard:
    """Score the candidate against the reference on paired cases.

    ``pairs`` has one row per case: ``cycle`` (sortable), ``case``,
    ``candidate``, ``reference``, ``observation`` (floats, NaN where missing)
    and the ``segments`` columns. ``metrics`` are names from
    :data:`numex.scoring.metrics.METRICS`, the primary first. ``method`` is the
    standard-error method (``iid``, ``ar1``, ``ar2``, ``dm`` with horizon
    ``h``); cells whose effective sample size is below ``floor`` get no
    verdict; ``levels`` are the confidence levels of the intervals and symbols.
    """
    segments = (segments,) if isinstance(segments, str) else tuple(segments)
    chosen = _validate(pairs, metrics, segments, floor, meta)
    check_method(method)
    levels = check_levels(levels)
    if h < 1 or int(h) != h:
        raise ValueError(f"h (forecast horizon in cycles) must be a positive integer, got {h!r}")

    if pairs["cycle"].isna().any():
        raise ValueError("pairs: column 'cycle' has missing values; every case needs its cycle")
    cycle_codes, cycle_values = _factorize(pairs["cycle"])
    n_cycles_all = len(cycle_values)
    candidate = _float_column(pairs, "candidate")
    reference = _float_column(pairs, "reference")
    observation = _float_column(pairs, "observation")

    segment_codes, segment_labels = [], []
    for segment in segments:
        codes, values = _factorize(pairs[segment])
        segment_codes.append(codes)
        segment_labels.append([_label(v) for v in values])
    grouping = _Grouping(cycle_codes, n_cycles_all, segment_codes, [len(v) for v in segment_labels])

    missing_c, missing_r, missing_o = (
        np.isnan(candidate),
        np.isnan(reference),
        np.isnan(observation),
    )
    excluded_rows = missing_c | missing_r | missing_o
    n_excluded = int(excluded_rows.sum())
    excluded = Exclusions(
        candidate_missing=int(missing_c.sum()),
        reference_missing=int(missing_r.sum()),
        observation_missing=int(missing_o.sum()),
        total=n_excluded,
    )
    if n_excluded:
        valid = ~excluded_rows
        excluded_sums = [a.sum(axis=0) for a in grouping.subset(excluded_rows).sums()]
        grouping = grouping.subset(valid)
        candidate, reference, observation = candidate[valid], reference[valid], observation[valid]
    else:
        excluded_sums = [np.zeros(1)] + [np.zeros(len(v)) for v in segment_labels]

    for metric in chosen:
        check_observations(metric, candidate, observation)
        check_observations(metric, reference, observation)

    counts = grouping.sums()
    needed = dict.fromkeys(q for metric in chosen for q in metric.quantities)
    sums = {
        side: {q: grouping.sums(QUANTITIES[q](forecast, observation)) for q in needed}
        for side, forecast in (("candidate", candidate), ("reference", reference))
    }

    axes: list[tuple[str | None, list[str]]] = [(None, [OVERALL])]
    axes += list(zip(segments, segment_labels, strict=True))
    columns = tuple(
        label if segment is None else f"{segment}={label}"
        for segment, labels in axes
        for label in labels
    )

    cycle_labels = [_json_value(value) for value in cycle_values]
    cells: list[Cell] = []
    series: list[CycleSeries] = []
    for metric in chosen:
        for axis, (segment, labels) in enumerate(axes):
            for j, label in enumerate(labels):
                per_cycle = counts[axis][:, j]
                present = np.flatnonzero(per_cycle)
                n = per_cycle[present].astype(np.float64)
                cell_sums = {
                    side: {q: sums[side][q][axis][present, j] for q in metric.quantities}
                    for side in sums
                }
                cell, values = _cell(
                    metric,
                    column=label if segment is None else f"{segment}={label}",
                    segment=segment,
                    value=None if segment is None else label,
                    n=n,
                    candidate=cell_sums["candidate"],
                    reference=cell_sums["reference"],
                    n_excluded=int(excluded_sums[axis][j]),
                    method=method,
                    h=h,
                    floor=float(floor),
                    levels=levels,
                )
                cells.append(cell)
                if segment is None:
                    series.append(_series(metric, cycle_labels, present, n, values, cell))

    family_size = sum(cell.assessed for cell in cells)
    family = Family(
        size=family_size,
        levels=tuple(
            FamilyLevel(
                level=level,
                per_cell_level=sidak_level(level, family_size) if family_size else None,
                familywise_if_unadjusted=(
                    familywise_level(level, family_size) if family_size else None
                ),
            )
            for level in levels
        ),
    )
    return Scorecard(
        metrics=tuple(m.name for m in chosen),
        segments=segments,
        columns=columns,
        method=method,
        h=int(h),
        floor=float(floor),
        levels=levels,
        n_cases=int(candidate.size),
        n_cycles=int(np.count_nonzero(counts[0])),
        excluded=excluded,
        family=family,
        cells=tuple(cells),
        series=tuple(series),
        meta=json.loads(json.dumps(dict(meta or {}))),
    )


def _symbol(test: PairedTest, direction: str | None, assessed: bool, levels: tuple[float, ...]):
    if not assessed:
        return BLANK, None
    if direction is not None and test.significant(levels[-1]):
        return (BETTER_STRONG if direction == "better" else WORSE_STRONG), direction
    if direction is not None and test.significant(levels[0]):
        return (BETTER if direction == "better" else WORSE), direction
    return NOT_SIGNIFICANT, None


def _cell(
    metric: Metric,
    *,
    column: str,
    segment: str | None,
    value: str | None,
    n: np.ndarray,
    candidate: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    n_excluded: int,
    method: str,
    h: int,
    floor: float,
    levels: tuple[float, ...],
) -> tuple[Cell, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    if n.size == 0:
        nothing = dict.fromkeys(
            ("candidate_score", "reference_score", "change", "change_percent")
            + ("mean_difference", "sd_difference", "standard_error", "r1", "r2", "n_eff")
            + ("t_statistic", "dof", "p_value", "direction", "verdict")
        )
        empty = Cell(
            metric=metric.name,
            column=column,
            segment=segment,
            value=value,
            n_cases=0,
            n_cycles=0,
            n_excluded=n_excluded,
            intervals=(),
            intervals_percent=(),
            symbol=BLANK,
            **nothing,
        )
        return empty, None

    per_cycle_c = metric.cycle_value(candidate, n)
    per_cycle_r = metric.cycle_value(reference, n)
    difference = per_cycle_c - per_cycle_r
    test = paired_test(difference, method, levels, h=h)
    score_c, score_r = (_finite(s) for s in metric.scores(candidate, reference, n))
    both = score_c is not None and score_r is not None
    change = _finite(metric.change(score_c, score_r)) if both else None
    change_percent = _finite(metric.change_percent(score_c, score_r)) if both else None

    reference_mean = float(per_cycle_r.mean())
    intervals_percent: tuple[Interval, ...] = ()
    bounds = [
        (
            i.level,
            metric.bound_percent(i.low, reference_mean),
            metric.bound_percent(i.high, reference_mean),
        )
        for i in test.intervals
    ]
    if bounds and all(low is not None and high is not None for _, low, high in bounds):
        intervals_percent = tuple(Interval(level, low, high) for level, low, high in bounds)

    direction = None
    if test.mean:
        good = (test.mean > 0) == metric.difference_higher_is_better
        direction = "better" if good else "worse"
    assessed = test.n_eff is not None and test.p_value is not None and test.n_eff >= floor
    symbol, verdict = _symbol(test, direction, assessed, levels)
    cell = Cell(
        metric=metric.name,
        column=column,
        segment=segment,
        value=value,
        n_cases=int(n.sum()),
        n_cycles=int(n.size),
        n_excluded=n_excluded,
        candidate_score=score_c,
        reference_score=score_r,
        change=change,
        change_percent=change_percent,
        mean_difference=_finite(test.mean),
        sd_difference=_finite(test.sd),
        standard_error=_finite(test.standard_error),
        r1=_finite(test.r1),
        r2=_finite(test.r2),
        n_eff=_finite(test.n_eff),
        t_statistic=_finite(test.t_statistic),
        dof=test.dof,
        p_value=_finite(test.p_value),
        intervals=test.intervals,
        intervals_percent=intervals_percent,
        direction=direction,
        symbol=symbol,
        verdict=verdict,
    )
    return cell, (per_cycle_c, per_cycle_r, difference)


def _series(
    metric: Metric,
    cycle_labels: list[Any],
    present: np.ndarray,
    n: np.ndarray,
    values: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    cell: Cell,
) -> CycleSeries:
    if values is None:
        return CycleSeries(metric.name, (), (), (), (), (), None, ())
    per_cycle_c, per_cycle_r, difference = values
    return CycleSeries(
        metric=metric.name,
        cycles=tuple(cycle_labels[i] for i in present),
        n_cases=tuple(int(x) for x in n),
        candidate=tuple(per_cycle_c.tolist()),
        reference=tuple(per_cycle_r.tolist()),
        difference=tuple(difference.tolist()),
        mean_difference=cell.mean_difference,
        intervals=cell.intervals,
    )
