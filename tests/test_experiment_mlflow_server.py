"""Registering an experiment through a real ``mlflow server`` process on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from numex import mlflow_bridge, specs
from numex.services import experiments
from numex.services.runtime import Actor
from tests.experiment_fixtures import write_small_routine

pytestmark = [pytest.mark.mlflow_server, pytest.mark.slow]

SYSTEM = Actor.system("test")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, mlflow_template):
    """``mlflow server`` on a free loopback port, its store a copy of the migrated
    template, its artifacts proxied to a local folder; stopped after the test."""
    folder = tmp_path / "server"
    folder.mkdir()
    shutil.copy(mlflow_template, folder / "mlflow.db")
    port = _free_port()
    log = folder / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{folder / 'mlflow.db'}",
                "--artifacts-destination",
                str(folder / "artifacts"),
            ],
            cwd=folder,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the workers it forks stop with it
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url, folder
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)


def test_an_experiment_registers_through_a_tracking_server(rt, tmp_path, mlflow_server):
    url, server_folder = mlflow_server
    rt.settings.mlflow_tracking_uri = url
    rt.settings.mlflow_registry_uri = url
    tiny = write_small_routine(tmp_path / "experiments")
    experiments.load_routine(rt, tiny, SYSTEM)

    registered = experiments.register_experiment(rt, tiny / "ridge.yaml", SYSTEM)

    assert registered.model_uri == "models:/numex.tiny/1"
    run = mlflow_bridge.run_info(rt.settings, registered.mlflow_run_id)
    assert run["status"] == "FINISHED"
    assert run["tags"][mlflow_bridge.TAG_CANDIDATE] == "ridge"
    version = mlflow_bridge.model_version_info(rt.settings, "numex.tiny", "1")
    assert version["run_id"] == registered.mlflow_run_id
    # The server kept the artifacts (proxied), not the client's local folder.
    assert list((server_folder / "artifacts").rglob("MLmodel"))
    assert not (rt.settings.home / "mlartifacts").exists()

    routine = specs.load_routine(tiny)
    holdout = specs.holdout_frame(specs.load_routine_data(routine), routine)
    model = mlflow_bridge.load_model(rt.settings, registered.model_uri)
    forecast = model.predict(holdout[["x1", "x2", "lead"]])
    assert np.isfinite(forecast).all() and len(forecast) == len(holdout)
