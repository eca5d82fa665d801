"""Where the top-level folders (templates, migrations, experiments) are found.

In a source checkout they sit beside the package; a built wheel carries them
inside it as ``numex/_templates`` and so on (see pyproject's force-include).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_path(name: str) -> Path:
    """The folder ``name`` ("templates", "migrations", "experiments")."""
    bundled = _PACKAGE / f"_{name}"
    if bundled.is_dir():
        return bundled
    checkout = _PACKAGE.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"numex cannot find its {name!r} folder (looked in {bundled}, {checkout})"
    )
