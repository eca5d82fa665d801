"""``numex scorecard``: a candidate against a reference, as a weather-centre grid, JSON or CSV.

Reading a scorecard needs only database access, like ``numex candidate show``.
"""

from __future__ import annotations

import click

from numex.cli.common import get_runtime
from numex.scoring import METHODS, OVERALL, Cell, Scorecard
from numex.services.scorecards import Comparison, level_text

FORMATS = ("table", "json", "csv")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def grid_text(card: Scorecard) -> str:
    """The grid as text: rows = metrics, columns = overall + segment values; each cell
    its symbol (blank when the sample is too small for a verdict) and change in %."""

    def entry(cell: Cell) -> str:
        if cell.n_cycles == 0:
            return "-"
        return f"{cell.symbol or ' '} {_percent(cell.change_percent)}"

    rows = [[""] + [column for column in card.columns]]
    for metric in card.metrics:
        rows.append([metric] + [entry(card.cell(metric, column)) for column in card.columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def render_table(comparison: Comparison) -> None:
    """The scorecard for people: header, grid, legend, family-wise levels, exclusions,
    counts and digest."""
    card = comparison.scorecard
    c, r = comparison.candidate, comparison.reference
    click.echo(
        f"{comparison.routine}: {c['name']} (#{c['id']}, {c['stage']}) against "
        f"{r['name']} (#{r['id']}, {r['stage']})"
    )
    click.echo(
        f"period: {comparison.period_text} · method {card.method} · "
        f"{card.n_cycles} cycles · {card.n_cases} paired cases"
    )
    if card.n_cases == 0:
        click.echo("no paired, verified cases: nothing to score yet")
    click.echo("")
    click.echo(grid_text(card))
    click.echo("")
    low, high = (f"{100 * level:g} %" for level in (card.levels[0], card.levels[-1]))
    click.echo(
        f"symbols: ▲/▼ candidate better/worse at {high}, △/▽ at {low}, · not significant, "
        f"blank: fewer than {card.floor:g} effective cycles; change in % of the reference"
    )
    if card.family.size:
        for family in card.family.levels:
            click.echo(
                f"family-wise: {card.family.size} assessed cells; each at "
                f"{level_text(family.level)} → all {card.family.size} at once "
                f"{level_text(family.familywise_if_unadjusted)}; a family-wise "
                f"{level_text(family.level)} needs each cell at "
                f"{level_text(family.per_cell_level)} (Šidák)"
            )
    else:
        click.echo("family-wise: no cell has enough effective cycles for a verdict")
    excluded = card.excluded
    click.echo(
        f"excluded: {excluded.total} pair(s) with a missing value (candidate "
        f"{excluded.candidate_missing}, reference {excluded.reference_missing}, observation "
        f"{excluded.observation_missing}); never averaged"
    )
    overall = card.cell(card.primary_metric, OVERALL)
    if overall.n_cycles:
        click.echo(
            f"{card.primary_metric} overall: {overall.candidate_score:.4g} against "
            f"{overall.reference_score:.4g}, p = {overall.p_value:.3g}, "
            f"n_eff = {overall.n_eff:.1f}"
            if overall.p_value is not None and overall.n_eff is not None
            else f"{card.primary_metric} overall: {overall.candidate_score:.4g} against "
            f"{overall.reference_score:.4g}"
        )
    click.echo(f"digest: {comparison.digest}")


@click.command("scorecard")
@click.argument("routine")
@click.argument("candidate")
@click.option(
    "--reference",
    metavar="C",
    help="The reference candidate (id or name); default the operational candidate.",
)
@click.option("--from", "start", metavar="T1", help="First cycle (a date or date-time).")
@click.option("--to", "end", metavar="T2", help="Last cycle (a date includes its day).")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="ar2",
    show_default=True,
    help="Standard errors: iid, ar1, ar2 (Geer 2016) or dm (Diebold–Mariano, HLN).",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table: the grid for people; json: the scorecard and its digest; csv: one row per cell.",
)
def scorecard(
    routine: str,
    candidate: str,
    reference: str | None,
    start: str | None,
    end: str | None,
    method: str,
    output: str,
) -> None:
    """Score CANDIDATE (id or name) of ROUTINE against a reference on the verified cases
    both forecast: every metric × segment with the change, its confidence interval and
    its significance.

    Exits 1 on an unknown routine or candidate, a bad period, or no reference.
    """
    import json

    from numex.services import scorecards

    comparison = scorecards.compare(
        get_runtime(), routine, candidate, reference, start, end, method
    )
    if output == "json":
        click.echo(json.dumps(comparison.to_dict(), indent=2, ensure_ascii=False))
    elif output == "csv":
        click.echo(comparison.scorecard.to_csv(), nl=False)
    else:
        render_table(comparison)
