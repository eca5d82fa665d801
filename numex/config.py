"""Configuration from environment variables, with local defaults.

Nothing here needs a file edit to try the demo: every setting has a default
under ``var/`` (the working directory's, or ``NUMEX_HOME``).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path


def _home() -> Path:
    return Path(os.environ.get("NUMEX_HOME", "var")).resolve()


def _secret_key(home: Path) -> str:
    """The secret key: ``NUMEX_SECRET_KEY``, else one generated once and kept under var/."""
    from_env = os.environ.get("NUMEX_SECRET_KEY")
    if from_env:
        return from_env
    path = home / "secret_key"
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    # Create with owner-only permissions; a concurrent creator wins and we read theirs.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


@dataclass
class Settings:
    """Every numex setting. Build one with :func:`load_settings`."""

    home: Path
    database_url: str
    secret_key: str
    mlflow_tracking_uri: str
    mlflow_registry_uri: str
    mlflow_artifact_root: str
    mlflow_ui_url: str | None = None
    experiments_dir: Path = field(default_factory=lambda: Path("experiments"))
    shadow_queue_size: int = 1000
    shadow_workers: int = 1
    candidate_timeout_s: float = 60.0
    #: A cycle claimed longer ago than this is taken to be abandoned and may be run again.
    cycle_lock_timeout_s: float = 900.0
    #: Seconds one MLflow registry call may take during ``numex registry sync``.
    registry_timeout_s: float = 5.0
    #: Web processes deliver registry changes in the background right after a decision.
    registry_autosync: bool = True
    #: Seconds a web process trusts an API token it has looked up (0: look up every time).
    token_cache_s: float = 5.0
    extra: dict = field(default_factory=dict)


def load_settings(**overrides) -> Settings:
    """Read settings from the environment; keyword arguments win over it."""
    home = Path(overrides.pop("home", None) or _home()).resolve()
    database_url = os.environ.get("NUMEX_DATABASE_URL") or f"sqlite:///{home / 'numex.db'}"
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    settings = Settings(
        home=home,
        database_url=database_url,
        secret_key="",
        mlflow_tracking_uri=tracking,
        mlflow_registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or tracking,
        mlflow_artifact_root=os.environ.get("NUMEX_MLFLOW_ARTIFACT_ROOT")
        or (home / "mlartifacts").as_uri(),
        mlflow_ui_url=os.environ.get("NUMEX_MLFLOW_UI_URL") or None,
        experiments_dir=Path(os.environ.get("NUMEX_EXPERIMENTS_DIR", "experiments")),
        shadow_queue_size=int(os.environ.get("NUMEX_SHADOW_QUEUE_SIZE", "1000")),
        shadow_workers=int(os.environ.get("NUMEX_SHADOW_WORKERS", "1")),
        candidate_timeout_s=float(os.environ.get("NUMEX_CANDIDATE_TIMEOUT", "60")),
        cycle_lock_timeout_s=float(os.environ.get("NUMEX_CYCLE_LOCK_TIMEOUT", "900")),
        registry_timeout_s=float(os.environ.get("NUMEX_REGISTRY_TIMEOUT", "5")),
        registry_autosync=os.environ.get("NUMEX_REGISTRY_AUTOSYNC", "1").lower()
        not in ("0", "false", "no", "off"),
        token_cache_s=float(os.environ.get("NUMEX_TOKEN_CACHE_SECONDS", "5")),
    )
    for key, value in overrides.items():
        if not hasattr(settings, key):
            raise TypeError(f"unknown setting {key!r}")
        setattr(settings, key, value)
    if not settings.secret_key:
        settings.secret_key = _secret_key(home)
    return settings
