"""``numex serve``: the development web server."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--debug", is_flag=True, help="Flask debug mode (reloader, debugger).")
def serve(host: str, port: int, debug: bool) -> None:
    """Run the web UI and JSON API (development server; use gunicorn in production)."""
    from numex.web import create_app

    app = create_app()
    click.echo(f"numex web UI at http://{host}:{port}/  (Ctrl+C stops)")
    app.run(host=host, port=port, debug=debug, use_reloader=debug)
