"""The deployment files: docker-compose wiring (no Docker engine runs here) and the wheel."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
import pytest
import yaml

from numex.cli import main

REPO = Path(__file__).resolve().parent.parent


def _compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _numex_invocations(command: str | list[str]) -> list[list[str]]:
    text = command if isinstance(command, str) else shlex.join(command)
    found = []
    for part in re.split(r"&&|;|\bexec\b", text):
        words = shlex.split(part.replace('sh -c "', "").replace('"', " "))
        if words and words[0] == "numex":
            found.append(words[1:])
    return found


def _resolve(args: list[str]) -> click.Command:
    command: click.Command = main
    for word in args:
        if word.startswith("-") or not isinstance(command, click.Group):
            break
        sub = command.get_command(click.Context(command), word)
        assert sub is not None, f"`numex {' '.join(args)}`: no command {word!r}"
        command = sub
    return command


def test_compose_has_the_services_with_health_checks():
    services = _compose()["services"]
    assert {"postgres", "mlflow", "web"} <= set(services)
    for name in ("postgres", "mlflow", "web"):
        assert "healthcheck" in services[name], name


def test_compose_wires_database_and_tracking_server():
    services = _compose()["services"]
    env = services["web"]["environment"]
    assert env["NUMEX_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/numex" in env["NUMEX_DATABASE_URL"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    mlflow_command = services["mlflow"]["command"]
    # numex's and MLflow's databases are separate.
    assert "postgres:5432/mlflow" in mlflow_command
    assert "--artifacts-destination" in mlflow_command
    assert any(v.endswith(":/mlartifacts") for v in services["mlflow"]["volumes"])
    assert services["web"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_every_compose_command_names_a_real_numex_command():
    invocations = []
    for service in _compose()["services"].values():
        if "command" in service:
            invocations += _numex_invocations(service["command"])
    assert ["db", "upgrade"] in invocations
    for args in invocations:
        _resolve(args)


def test_web_upgrades_the_database_before_gunicorn_starts():
    command = _compose()["services"]["web"]["command"]
    assert command.index("numex db upgrade") < command.index("gunicorn")
    target = re.search(r"'([\w.]+):(\w+)\(\)'", command)
    module, factory = target.groups()
    assert (module, factory) == ("numex.web", "create_app")


def test_dockerfile_ships_what_the_wheel_needs():
    dockerfile = (REPO / "Dockerfile").read_text()
    for folder in ("numex", "templates", "migrations", "experiments"):
        assert f"COPY {folder} ./{folder}" in dockerfile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_built_wheel_installs_migrates_and_serves(tmp_path):
    """A non-editable install carries templates, static assets and migrations."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    wheel = next(dist.glob("numex-*.whl"))
    venv = tmp_path / "venv"
    # The fresh environment reuses this one's packages but not its numex.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    site = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env_site = next((venv / "lib").glob("python*/site-packages"))
    (env_site / "parent.pth").write_text(site + "\n")
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "NUMEX_HOME": str(elsewhere / "var"), "PYTHONPATH": ""}
    env.pop("NUMEX_DATABASE_URL", None)
    env.pop("NUMEX_EXPERIMENTS_DIR", None)
    located = subprocess.run(
        [
            str(python),
            "-c",
            "import numex, numex.resources as r; print(numex.__file__); "
            "print(r.resource_path('migrations')); print(r.resource_path('templates'))",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(venv) in located and "/work/main/migrations" not in located
    numex_bin = venv / "bin" / "numex"
    upgraded = subprocess.run(
        [str(numex_bin), "db", "upgrade"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert upgraded.returncode == 0, upgraded.stderr
    port = _free_port()
    server = subprocess.Popen(
        [str(numex_bin), "serve", "--port", str(port)],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.time() < deadline, "numex serve did not come up"
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login") as response:
            page = response.read().decode()
        assert "Sign in" in page
        css = re.search(r'href="(/static/[^"]+\.css)"', page).group(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{css}") as response:
            assert response.status == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
