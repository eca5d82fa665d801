"""Scorecard pages: one candidate against a reference (the coloured metric × segment grid,
the per-cycle difference chart, CSV and JSON downloads) and the ops comparison of every
parallel candidate against the operational one.

Both call :mod:`numex.services.scorecards`, as the API and ``numex scorecard`` do; this
module only turns a :class:`~numex.scoring.Scorecard` into what the templates draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, render_template, request

from numex.scoring import OVERALL, Cell, Scorecard, get_metric
from numex.scoring.scorecard import (
    BETTER,
    BETTER_STRONG,
    BLANK,
    NOT_SIGNIFICANT,
    WORSE,
    WORSE_STRONG,
)
from numex.services import scorecards
from numex.services.errors import InvalidInput
from numex.services.scorecards import level_text
from numex.web.context import runtime

bp = Blueprint("scorecards", __name__, url_prefix="/routines")

#: The query parameters of a scorecard (page, downloads and API alike).
PARAMETERS = ("candidate", "reference", "from", "to", "method")
#: Symbol → CSS class: green for the candidate better, red for worse, whatever the metric.
SYMBOL_CLASS = {
    BETTER_STRONG: "sc-better-strong",
    BETTER: "sc-better",
    NOT_SIGNIFICANT: "sc-even",
    WORSE: "sc-worse",
    WORSE_STRONG: "sc-worse-strong",
    BLANK: "sc-blank",
}
#: What the paired test compares per cycle, per metric (the chart's y axis).
CYCLE_VALUE = {
    "bias": "|mean error|",
    "mae": "MAE",
    "mse": "MSE",
    "rmse": "MSE",
    "msess": "MSE",
    "sde": "error variance",
    "brier": "Brier score",
    "log_loss": "log loss",
    "accuracy": "accuracy",
}
#: Running-mean window of the chart's smoothed difference, in cycles.
CHART_WINDOW = 30


# --- formatting --------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f} %"


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2g}" if value >= 1e-4 else "< 0.0001"


def _interval_text(cell: Cell, level: float) -> str:
    percent = next((i for i in cell.intervals_percent if math.isclose(i.level, level)), None)
    if percent is not None:
        return f"{percent.low:+.1f} % … {percent.high:+.1f} %"
    absolute = cell.interval(level)
    if absolute is not None:
        return f"{absolute.low:+.4g} … {absolute.high:+.4g} (in d̄)"
    return "—"


# --- the grid as the templates draw it ---------------------------------------------


@dataclass
class GridCell:
    """One drawn cell: symbol, change, colour class and the numbers shown on hover."""

    cell: Cell
    css: str
    text: str
    hover: str
    #: The first column of its group (overall, or a segment's first value): drawn with
    #: a rule to its left.
    first: bool


@dataclass
class Grid:
    """Column groups (overall, then one per segment) and one row of cells per metric."""

    groups: list[tuple[str, list[str]]]
    rows: list[tuple[str, str, list[GridCell]]]


def _hover(card: Scorecard, cell: Cell, candidate: str, reference: str) -> str:
    if cell.n_cycles == 0:
        return f"{cell.metric} · {cell.column}: no paired, verified cases"
    lines = [
        f"{cell.metric} · {cell.column}",
        f"{candidate}: {_number(cell.candidate_score)}",
        f"{reference}: {_number(cell.reference_score)}",
        f"change: {_percent(cell.change_percent)}",
    ]
    lines += [f"CI {level_text(level)}: {_interval_text(cell, level)}" for level in card.levels]
    lines.append(f"p = {_p(cell.p_value)} · n_eff = {_number(cell.n_eff)}")
    lines.append(f"{cell.n_cases} cases in {cell.n_cycles} cycles")
    if cell.n_excluded:
        lines.append(f"{cell.n_excluded} pairs excluded (a value missing)")
    if not cell.assessed:
        lines.append(f"no verdict: n_eff below the floor of {card.floor:g}")
    return "\n".join(lines)


def grid(card: Scorecard, candidate: str, reference: str) -> Grid:
    """The scorecard as rows (metrics) of cells under column groups (overall, segments)."""
    groups: list[tuple[str, list[str]]] = [(OVERALL, [OVERALL])]
    for column in card.columns[1:]:
        segment, _, value = column.partition("=")
        if groups[-1][0] != segment:
            groups.append((segment, []))
        groups[-1][1].append(value)
    firsts, index = set(), 0
    for _, values in groups:
        firsts.add(index)
        index += len(values)
    rows = []
    for metric in card.metrics:
        cells = []
        for index, column in enumerate(card.columns):
            cell = card.cell(metric, column)
            text = "" if cell.n_cycles == 0 else _percent(cell.change_percent)
            cells.append(
                GridCell(
                    cell=cell,
                    css=SYMBOL_CLASS.get(cell.symbol, "sc-blank"),
                    text=text,
                    hover=_hover(card, cell, candidate, reference),
                    first=index in firsts,
                )
            )
        rows.append((metric, get_metric(metric).title, cells))
    return Grid(groups, rows)


def _rounded(values: tuple[float, ...] | list[float]) -> list[float | None]:
    # Six significant digits are plenty for a chart and keep the page small.
    return [float(f"{v:.6g}") if v is not None and math.isfinite(v) else None for v in values]


def chart_series(card: Scorecard) -> dict[str, Any]:
    """Per metric: cycles, per-cycle differences d_t, d̄ and its intervals (the band),
    what d_t compares, and which side of zero means the candidate is better."""
    result = {}
    for metric in card.metrics:
        series = card.cycle_series(metric)
        result[metric] = {
            "cycles": [str(c)[:19] for c in series.cycles],
            "difference": _rounded(series.difference),
            "mean": series.mean_difference,
            "intervals": [
                {
                    "level": i.level,
                    "label": level_text(i.level),
                    "low": i.low,
                    "high": i.high,
                }
                for i in series.intervals
            ],
            "value": CYCLE_VALUE.get(metric, metric),
            "better_below": not get_metric(metric).difference_higher_is_better,
        }
    return result


# --- pages -------------------------------------------------------------------------


def _query(**changes: Any) -> dict[str, str]:
    """The request's scorecard parameters (non-empty ones), with ``changes`` applied."""
    query = {name: request.args.get(name, "").strip() for name in PARAMETERS}
    query.update({k: v for k, v in changes.items()})
    return {k: str(v) for k, v in query.items() if v not in (None, "")}


def _default_candidate(candidates: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The candidate a bare scorecard page shows: the newest parallel one, else the newest
    that is not operational."""
    for stages in (("parallel",), ("experiment", "retired", "rejected")):
        chosen = [c for c in candidates if c["stage"] in stages]
        if chosen:
            return chosen[-1]
    return None


def _comparison(name: str) -> scorecards.Comparison:
    query = _query()
    return scorecards.compare(
        runtime(),
        name,
        query.get("candidate"),
        query.get("reference"),
        query.get("from"),
        query.get("to"),
        query.get("method"),
    )


@bp.get("/<name>/scorecard")
def show(name: str):
    """The scorecard page; bad choices in the form come back as a message above it."""
    rt = runtime()
    query = _query()
    candidates = scorecards.candidates_of(rt, name)
    if not query.get("candidate"):
        default = _default_candidate(candidates)
        if default is not None:
            query["candidate"] = str(default["id"])
    comparison, problem = None, None
    if query.get("candidate"):
        try:
            comparison = scorecards.compare(
                rt,
                name,
                query["candidate"],
                query.get("reference"),
                query.get("from"),
                query.get("to"),
                query.get("method"),
            )
        except InvalidInput as error:
            problem = error.message
    chosen_metric = request.args.get("chart", "")
    context: dict[str, Any] = {
        "name": name,
        "query": query,
        "candidates": candidates,
        "methods": scorecards.METHODS,
        "default_method": scorecards.DEFAULT_METHOD,
        "comparison": comparison,
        "problem": problem,
    }
    if comparison is not None:
        card = comparison.scorecard
        context.update(
            card=card,
            grid=grid(card, comparison.candidate["name"], comparison.reference["name"]),
            series=chart_series(card),
            chart_metric=chosen_metric if chosen_metric in card.metrics else card.metrics[0],
            chart_window=CHART_WINDOW,
            period=comparison.period_text,
            level_text=lambda level: level_text(level, "—"),
            downloads={**query, "candidate": str(comparison.candidate["id"])},
        )
    status = 400 if problem else 200
    return render_template("scorecards/show.html", **context), status


def _download_name(comparison: scorecards.Comparison, extension: str) -> str:
    c, r = comparison.candidate, comparison.reference
    return f"scorecard-{comparison.routine}-{c['name']}-vs-{r['name']}.{extension}"


def _download(comparison: scorecards.Comparison, body: str, mimetype: str, extension: str):
    return Response(
        body,
        mimetype=mimetype,
        headers={
            "Content-Disposition": (
                f'attachment; filename="{_download_name(comparison, extension)}"'
            ),
            "X-Scorecard-Digest": comparison.digest,
        },
    )


@bp.get("/<name>/scorecard.csv")
def download_csv(name: str):
    """The scorecard as CSV, one row per cell (same query as the page)."""
    comparison = _comparison(name)
    return _download(comparison, comparison.scorecard.to_csv(), "text/csv", "csv")


@bp.get("/<name>/scorecard.json")
def download_json(name: str):
    """The scorecard as JSON with its digest (same query as the page)."""
    import json

    comparison = _comparison(name)
    body = json.dumps(comparison.to_dict(), ensure_ascii=False, indent=1)
    return _download(comparison, body, "application/json", "json")


@bp.get("/<name>/compare")
def compare(name: str):
    """Every parallel candidate against the operational one, on one screen."""
    query = {k: v for k, v in _query().items() if k in ("from", "to", "method")}
    problem = None
    try:
        overview = scorecards.compare_parallel(
            runtime(), name, query.get("from"), query.get("to"), query.get("method")
        )
    except InvalidInput as error:
        problem = error.message
        overview = scorecards.compare_parallel(runtime(), name)
        query = {}
    panels = []
    primary = None
    overlay = []
    for comparison in overview.comparisons:
        card = comparison.scorecard
        primary = primary or card.primary_metric
        series = chart_series(card)[card.primary_metric]
        overlay.append({"candidate": comparison.candidate["name"], **series})
        panels.append(
            {
                "comparison": comparison,
                "card": card,
                "grid": grid(card, comparison.candidate["name"], comparison.reference["name"]),
                "overall": card.cell(card.primary_metric, OVERALL),
            }
        )
    return render_template(
        "scorecards/compare.html",
        name=name,
        overview=overview,
        panels=panels,
        overlay=overlay,
        primary=primary,
        query=query,
        problem=problem,
        methods=scorecards.METHODS,
        default_method=scorecards.DEFAULT_METHOD,
        chart_window=CHART_WINDOW,
        level_text=lambda level: level_text(level, "—"),
    ), (400 if problem else 200)
