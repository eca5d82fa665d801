"""Shared fixtures: every test gets its own migrated database and MLflow store.

The database is SQLite by default. Set ``NUMEX_TEST_POSTGRES_URL`` to a PostgreSQL
server's URL (as ``scripts/test.sh`` does) and every test runs on a fresh database
on that server instead, created from a migrated template.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

# Cheap password hashing for tests (set before numex.services.users is imported).
os.environ.setdefault("NUMEX_PASSWORD_HASH_METHOD", "pbkdf2:sha256:1000")

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from numex import schema
from numex.config import load_settings
from numex.services.runtime import Runtime

POSTGRES_URL = os.environ.get("NUMEX_TEST_POSTGRES_URL")
REPO = Path(__file__).resolve().parent.parent


def _pg_admin_engine():
    return create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def template_database(tmp_path_factory) -> str:
    """A database migrated to head once per session; tests get copies of it."""
    if POSTGRES_URL:
        name = f"numex_tpl_{uuid.uuid4().hex[:8]}"
        admin = _pg_admin_engine()
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
        schema.upgrade(url)
        yield name
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    else:
        path = tmp_path_factory.mktemp("template") / "numex.db"
        schema.upgrade(f"sqlite:///{path}")
        yield str(path)


@contextlib.contextmanager
def copy_database(template: str, tmp_path: Path):
    """A fresh copy of ``template`` (a PostgreSQL database name or a SQLite file); yields
    its URL and drops it afterwards."""
    if POSTGRES_URL:
        name = f"numex_t_{uuid.uuid4().hex[:10]}"
        admin = _pg_admin_engine()
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        try:
            yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    else:
        path = tmp_path / "numex.db"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"


@pytest.fixture
def database_url(template_database, tmp_path) -> str:
    """A fresh database at head for this test."""
    with copy_database(template_database, tmp_path) as url:
        yield url


@pytest.fixture
def empty_database_url(tmp_path) -> str:
    """A database with no schema at all (for migration tests)."""
    if POSTGRES_URL:
        name = f"numex_e_{uuid.uuid4().hex[:10]}"
        admin = _pg_admin_engine()
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    else:
        yield f"sqlite:///{tmp_path / 'empty.db'}"


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store migrated once per session (MLflow runs its own
    migrations on a new store, which takes seconds); tests get copies of it."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("mlflow-template")
    path = folder / "mlflow.db"
    store = SqlAlchemyStore(f"sqlite:///{path}", (folder / "artifacts").as_uri())
    store.engine.dispose()
    return path


@pytest.fixture
def settings(tmp_path, database_url, monkeypatch, mlflow_template):
    """Settings for one test: its own home, database and MLflow store."""
    home = tmp_path / "var"
    home.mkdir()
    monkeypatch.setenv("NUMEX_HOME", str(home))
    monkeypatch.setenv("NUMEX_DATABASE_URL", database_url)
    monkeypatch.setenv("NUMEX_SECRET_KEY", "test-secret")
    shutil.copy(mlflow_template, home / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("NUMEX_MLFLOW_ARTIFACT_ROOT", (home / "mlartifacts").as_uri())
    monkeypatch.setenv("NUMEX_EXPERIMENTS_DIR", str(REPO / "experiments"))
    return load_settings()


@pytest.fixture
def rt(settings):
    runtime = Runtime(settings)
    yield runtime
    runtime.close()


@pytest.fixture
def app(settings):
    from numex.web import create_app

    app = create_app({"TESTING": True}, settings=settings)
    yield app
    app.extensions["numex"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(settings):
    """Invoke the ``numex`` CLI against this test's database and stores."""
    from numex.cli import main

    class Runner:
        def __init__(self) -> None:
            self.cli = CliRunner()

        def invoke(self, *args: str, **kwargs):
            return self.cli.invoke(main, list(args), catch_exceptions=False, **kwargs)

    return Runner()


#: The people of the standard test cast: user name → roles. Password: "<name>-password".
CAST = {
    "sam": ["scientist"],
    "sara": ["scientist"],
    "rita": ["reviewer"],
    "remy": ["reviewer"],
    "olga": ["ops"],
    "adam": ["admin"],
    "vic": ["viewer"],
}


def password_of(username: str) -> str:
    return f"{username}-password"


@pytest.fixture
def cast(rt):
    """The standard cast of users, created in this test's database."""
    from numex.services import users
    from numex.services.runtime import Actor

    for username, roles in CAST.items():
        users.add_user(rt, username, roles, Actor.system("test"), password=password_of(username))
    return CAST


class AuthActions:
    """Signs a test client in and out through the real login form (CSRF included)."""

    def __init__(self, client) -> None:
        self.client = client

    def csrf_token(self, path: str = "/login") -> str:
        import re

        page = self.client.get(path).text
        match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or re.search(
            r'name="csrf_token" value="([^"]+)"', page
        )
        assert match, f"no CSRF token on {path}"
        return match.group(1)

    def login(self, username: str, password: str | None = None):
        return self.client.post(
            "/login",
            data={
                "username": username,
                "password": password or password_of(username),
                "csrf_token": self.csrf_token(),
            },
        )

    def logout(self):
        return self.client.post("/logout", data={"csrf_token": self.csrf_token("/")})


@pytest.fixture
def auth(client, cast):
    return AuthActions(client)


@pytest.fixture
def token_for(rt, cast):
    """token_for("rita") → a fresh API token for that cast member."""
    from numex.services import users
    from numex.services.runtime import Actor

    def make(username: str) -> str:
        return users.create_token(rt, username, Actor.system("test")).token

    return make


# The cycle tests' small routine and fault-injected models (fixtures ``fault_models``, ``ticks``).
from tests.cycle_fixtures import fault_models, ticks  # noqa: E402, F401
