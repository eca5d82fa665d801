"""A real ``mlflow server`` process follows numex; stopping it never blocks or loses a
decision, and ``numex registry sync`` reconciles once it is back."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from numex import mlflow_bridge
from numex.db import Candidate
from numex.services import experiments, registry_sync, stages
from numex.services.runtime import Actor
from tests.experiment_fixtures import write_small_routine

pytestmark = [pytest.mark.mlflow_server, pytest.mark.slow]

SYSTEM = Actor.system("test")
OPS = Actor("olga", roles=frozenset({"ops"}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on a loopback port with a SQLite store and local artifacts; it can
    be stopped and started again on the same store and port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.log = folder / "mlflow-server.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        with open(self.log, "ab") as log:
            # Its own process group: stop() ends the server and the workers it forks.
            self.process = subprocess.Popen(
                [
                    str(mlflow),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    f"sqlite:///{self.folder / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(self.folder / "artifacts"),
                ],
                cwd=self.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        group = os.getpgid(self.process.pid)
        os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.process.wait(timeout=10)
        # The workers share the group; make sure none keeps the port.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process = None


@pytest.fixture
def mlflow_server(tmp_path):
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    server = MlflowServer(folder)
    server.start()
    yield server
    server.stop()


def _stage_tags(settings, versions: dict[str, str]) -> dict[str, str | None]:
    return {
        name: mlflow_bridge.model_version_info(settings, "numex.tiny", v)["tags"].get("numex.stage")
        for name, v in versions.items()
    }


def _move(rt, name: str, to_stage: str) -> None:
    with rt.transaction() as session:
        candidate = session.scalar(select(Candidate).where(Candidate.name == name))
        stages.move(session, candidate, to_stage, kind="test", actor=OPS, reason="test")


def test_registry_follows_numex_through_a_tracking_server_outage(
    rt, settings, runner, mlflow_server, tmp_path, monkeypatch
):
    # Point numex (this runtime and the CLI's) at the tracking server.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("NUMEX_REGISTRY_TIMEOUT", "2")
    settings.mlflow_tracking_uri = settings.mlflow_registry_uri = mlflow_server.uri
    settings.registry_timeout_s = 2

    # Two candidates registered through numex: trained, logged and registered in MLflow.
    folder = write_small_routine(tmp_path / "experiments")
    experiments.load_routine(rt, folder, SYSTEM)
    versions = {}
    for name in ("persistence", "ridge"):
        experiments.register_experiment(rt, folder / f"{name}.yaml", SYSTEM)
    with rt.read() as session:
        for candidate in session.scalars(select(Candidate)):
            assert candidate.registered_model_name == "numex.tiny"
            versions[candidate.name] = candidate.model_version
    experiments.bootstrap(rt, "tiny", "persistence", SYSTEM)
    _move(rt, "ridge", "parallel")

    report = registry_sync.sync(rt, OPS)
    assert report.ok, report.to_dict()
    assert (
        mlflow_bridge.get_alias(settings, "numex.tiny", "operational") == (versions["persistence"])
    )
    assert _stage_tags(settings, versions) == {"persistence": "operational", "ridge": "parallel"}

    # MLflow goes down. A decision still commits at once; the sync reports the outage fast.
    mlflow_server.stop()
    started = time.monotonic()
    _move(rt, "ridge", "operational")
    assert time.monotonic() - started < 2
    started = time.monotonic()
    report = registry_sync.sync(rt, OPS)
    assert time.monotonic() - started < 10
    assert not report.ok and report.failed == 2 and "unreachable" in report.error
    status = registry_sync.registry_status(rt, "tiny")
    assert status.behind and status.pending == 2 and "unreachable" in status.last_error
    with rt.read() as session:
        stage_of = dict(session.execute(select(Candidate.name, Candidate.stage)).all())
    assert stage_of == {"persistence": "retired", "ridge": "operational"}
    result = runner.invoke("registry", "status")
    assert "MLflow registry behind by 2 change(s)" in result.output

    # MLflow comes back on the same store: the CLI reconciles and the alias moves.
    mlflow_server.start()
    result = runner.invoke("registry", "sync")
    assert result.exit_code == 0, result.output
    assert f"numex.tiny@operational → {versions['ridge']}" in result.output
    assert mlflow_bridge.get_alias(settings, "numex.tiny", "operational") == versions["ridge"]
    assert _stage_tags(settings, versions) == {"persistence": "retired", "ridge": "operational"}
    assert not registry_sync.registry_status(rt).behind
