"""``numex candidate``: list, show and bring-your-own registration."""

from __future__ import annotations

import click

from numex.cli.common import NumexGroup, emit, get_runtime, json_option, table, token_option
from numex.cli.experiment import acting, progress_echo
from numex.lifecycle import STAGES


@click.group(cls=NumexGroup)
def candidate() -> None:
    """Candidates: list, show, register a model already in MLflow."""


def _score(row: dict) -> str:
    first = next(iter(row["offline"].items()), None)
    if not first or first[1] is None:
        return "-"
    return f"{first[0]} {first[1]:.4g}"


@candidate.command("list")
@click.option("--routine", help="Only this routine's candidates.")
@click.option("--stage", type=click.Choice(STAGES), help="Only candidates at this stage.")
@json_option
def list_(routine: str | None, stage: str | None, as_json: bool) -> None:
    """List candidates, newest first."""
    from numex.services import experiments

    rows = experiments.list_candidates(get_runtime(), routine=routine, stage=stage)

    def render(data: list[dict]) -> None:
        if not data:
            click.echo("no candidates: numex experiment register experiments/<routine>/<name>.yaml")
            return
        table(
            [[c["id"], c["routine"], c["name"], c["stage"], c["source"], _score(c)] for c in data],
            ["id", "routine", "name", "stage", "source", "offline"],
        )

    emit(rows, as_json, render)


@candidate.command("show")
@click.argument("candidate_id")
@json_option
def show(candidate_id: str, as_json: bool) -> None:
    """Show candidate CANDIDATE_ID: lineage, parameters, offline scores, stage history."""
    from numex.services import experiments

    data = experiments.get_candidate(get_runtime(), candidate_id)

    def render(c: dict) -> None:
        lineage = c["lineage"]
        click.echo(f"#{c['id']} {c['name']}  routine {c['routine']}  stage {c['stage']}")
        if c["description"]:
            click.echo(f"  {c['description']}")
        click.echo(f"  author: {c['author']}  registered: {c['created_at']}")
        click.echo(f"  model: {c['model_uri']}  (MLflow run {lineage['mlflow_run_id'] or '-'})")
        if lineage["mlflow_run_url"]:
            click.echo(f"  MLflow: {lineage['mlflow_run_url']}")
        dirty = {True: " (dirty)", False: "", None: ""}[lineage["code_dirty"]]
        click.echo(f"  code: {lineage['code_commit'] or 'not a git checkout'}{dirty}")
        click.echo(f"  spec digest: {lineage['spec_digest'] or '-'}")
        click.echo(f"  data digest: {lineage['data_digest'] or '-'}")
        click.echo(f"  features: {', '.join(c['features'])}")
        scores = c["offline_scores"] or {}
        if scores.get("overall"):
            click.echo(f"  offline ({scores.get('period')}, {scores.get('n_cases')} cases):")
            for metric, value in scores["overall"].items():
                click.echo(f"    {metric}: {'-' if value is None else f'{value:.4g}'}")
        for t in c["transitions"]:
            click.echo(f"  {t['at']}  {t['from']} → {t['to']}  {t['kind']} by {t['actor']}")

    emit(data, as_json, render)


@candidate.command("register")
@click.option("--routine", required=True, help="The routine the model forecasts for.")
@click.option("--model-uri", required=True, help="models:/<name>/<version> or runs:/<run>/<path>.")
@click.option("--name", help="Candidate name (default: derived from the URI).")
@token_option
@json_option
def register(
    routine: str, model_uri: str, name: str | None, token: str | None, as_json: bool
) -> None:
    """Register a model already in MLflow as a candidate (bring your own model).

    Its signature's input columns must be among the routine's features.
    """
    from numex.services import experiments

    result = experiments.register_model_uri(
        get_runtime(),
        routine,
        model_uri,
        acting(token),
        name=name,
        progress=progress_echo(),
    )

    def render(r) -> None:
        click.echo(r["message"])
        for note in r["notes"]:
            click.echo(f"note: {note}")

    emit(result.to_dict(), as_json, render)
