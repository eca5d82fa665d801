"""The ``numex`` command: a click group calling the same services as the web UI and API."""

from __future__ import annotations

import click

from numex import __version__
from numex.cli.common import NumexGroup


@click.group(cls=NumexGroup)
@click.version_option(__version__, prog_name="numex")
def main() -> None:
    """numex: carry model candidates from experiment through a parallel routine into
    operations, with gates, sign-offs and an audit trail."""


def _register() -> None:
    from numex.cli import audit, candidate, db, demo, experiment, routine, serve, user

    main.add_command(db.db)
    main.add_command(serve.serve)
    main.add_command(routine.routine)
    main.add_command(user.user)
    main.add_command(audit.audit_, name="audit")
    main.add_command(experiment.experiment)
    main.add_command(candidate.candidate)
    main.add_command(demo.demo)
    from numex.cli import promote

    main.add_command(promote.promote)
    main.add_command(promote.signoff)
    main.add_command(promote.rollback)

    from numex.cli import registry

    main.add_command(registry.registry)

    from numex.cli import cycle

    main.add_command(cycle.cycle)
    main.add_command(cycle.scheduler)
    main.add_command(cycle.observations)

    from numex.cli import scorecard

    main.add_command(scorecard.scorecard)


_register()
