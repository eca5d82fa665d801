from numex.config import load_settings


def test_defaults_live_under_var(tmp_path, monkeypatch):
    for name in ("NUMEX_DATABASE_URL", "MLFLOW_TRACKING_URI", "NUMEX_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NUMEX_HOME", str(tmp_path / "var"))
    settings = load_settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'numex.db'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'var' / 'mlflow.db'}"
    assert settings.mlflow_tracking_uri != settings.database_url


def test_secret_key_is_generated_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMEX_SECRET_KEY", raising=False)
    monkeypatch.setenv("NUMEX_HOME", str(tmp_path))
    first = load_settings().secret_key
    assert len(first) == 64
    assert load_settings().secret_key == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMEX_HOME", str(tmp_path))
    monkeypatch.setenv("NUMEX_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("NUMEX_SECRET_KEY", "k")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.secret_key == "k"
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5001"
