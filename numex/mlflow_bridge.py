"""The MLflow bridge: the only module that imports ``mlflow``.

Everything numex asks of MLflow goes through here: logging a training run
(parameters, metrics, the model with explicit pip requirements, the dataset as
an input, lineage tags), registering a model version under a routine's
registered model, loading a model (cached per process), and the registry
follow-ups (aliases, version tags) that ``numex registry sync`` delivers.

The tracking and registry URIs come from :class:`numex.config.Settings`: by
default a local SQLite store ``var/mlflow.db`` with artifacts under
``var/mlartifacts``, or a tracking server given by ``MLFLOW_TRACKING_URI``.

``mlflow`` is imported inside the functions: importing it takes about a second,
and commands that never touch MLflow (``numex --help``) must stay fast.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from numex.config import Settings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from mlflow import MlflowClient

#: Tag keys numex writes on runs and model versions.
TAG_ROUTINE = "numex.routine"
TAG_CANDIDATE = "numex.candidate"
TAG_CANDIDATE_ID = "numex.candidate_id"
TAG_SPEC_DIGEST = "numex.spec_digest"
TAG_DATA_DIGEST = "numex.data_digest"
TAG_LINEAGE_DIGEST = "numex.lineage_digest"
TAG_CODE_COMMIT = "numex.code_commit"
TAG_CODE_DIRTY = "numex.code_dirty"
TAG_STAGE = "numex.stage"
TAG_ORPHAN = "numex.orphan"
#: MLflow's own tag for the source commit (shown in its UI).
TAG_GIT_COMMIT = "mlflow.source.git.commit"

#: Packages every numex-logged model needs at load time, whatever the estimator.
BASE_REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "pandas", "scipy", "cloudpickle")

_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_configure_lock = threading.Lock()
_configured: tuple[str, str] | None = None


class MlflowBridgeError(RuntimeError):
    """MLflow could not do what numex asked (unreachable server, missing model...)."""


# --- configuration -------------------------------------------------------------------


def configure(settings: Settings) -> None:
    """Point MLflow's fluent API at the settings' tracking and registry URIs."""
    global _configured
    wanted = (settings.mlflow_tracking_uri, settings.mlflow_registry_uri)
    if _configured == wanted:
        return
    import mlflow

    with _configure_lock:
        # MLflow also exports both URIs to os.environ (for its subprocesses); numex's
        # settings are read from there, so put the environment back as it was.
        saved = {name: os.environ.get(name) for name in _URI_VARIABLES}
        try:
            mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
            mlflow.set_registry_uri(settings.mlflow_registry_uri)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        _configured = wanted


def client(settings: Settings) -> MlflowClient:
    """An MLflow client on the settings' tracking and registry stores."""
    from mlflow import MlflowClient

    configure(settings)
    return MlflowClient(
        tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_registry_uri
    )


def is_server(tracking_uri: str) -> bool:
    """True when the tracking store is a server (it then decides where artifacts go)."""
    return tracking_uri.split(":", 1)[0] in ("http", "https", "databricks")


def _artifact_location(settings: Settings, experiment_name: str) -> str | None:
    """Where a new MLflow experiment keeps its artifacts.

    With a local store: under ``settings.mlflow_artifact_root``. With a tracking
    server: the server's own artifact store (proxied), unless an artifact root was
    set explicitly (``NUMEX_MLFLOW_ARTIFACT_ROOT``) to something other than the
    local default.
    """
    root = settings.mlflow_artifact_root.rstrip("/")
    local_default = (settings.home / "mlartifacts").as_uri()
    if is_server(settings.mlflow_tracking_uri) and root == local_default:
        return None
    return f"{root}/{quote(experiment_name, safe='')}"


def ensure_experiment(settings: Settings, name: str) -> str:
    """The id of the MLflow experiment ``name``, created on first use with numex's
    artifact location."""
    from mlflow.exceptions import MlflowException

    key = (settings.mlflow_tracking_uri, name)
    known = _experiment_ids.get(key)
    if known is not None:
        return known
    mlflow_client = client(settings)
    existing = mlflow_client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(existing.experiment_id)
        experiment_id = existing.experiment_id
    else:
        try:
            experiment_id = mlflow_client.create_experiment(
                name, artifact_location=_artifact_location(settings, name)
            )
        except MlflowException:
            # Created concurrently by another process: use theirs.
            existing = mlflow_client.get_experiment_by_name(name)
            if existing is None:
                raise
            experiment_id = existing.experiment_id
    _experiment_ids[key] = experiment_id
    return experiment_id


def experiment_name_for(routine: str) -> str:
    """The MLflow experiment numex logs a routine's training runs in."""
    return f"numex/{routine}"


# --- pip requirements ----------------------------------------------------------------


@functools.cache
def _distributions_of_packages() -> Mapping[str, list[str]]:
    import importlib.metadata  # here, not at the top: it costs tens of ms to import

    return importlib.metadata.packages_distributions()


@functools.cache
def _pin(distribution: str) -> str | None:
    import importlib.metadata

    try:
        return f"{distribution}=={importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return None


def _modules_of(model: Any) -> set[str]:
    """Top-level packages of the model's class and of every estimator inside it."""
    seen: set[str] = set()
    stack = [model]
    visited: set[int] = set()
    while stack:
        obj = stack.pop()
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        module = type(obj).__module__ or ""
        if module and module != "builtins":
            seen.add(module.split(".", 1)[0])
        if hasattr(obj, "get_params"):
            try:
                params = obj.get_params(deep=False)
            except Exception:  # a third-party estimator may not implement it properly
                params = {}
            for value in params.values():
                if isinstance(value, list | tuple):
                    stack.extend(value)
                elif hasattr(value, "get_params"):
                    stack.append(value)
    return seen


def pip_requirements_for(model: Any) -> list[str]:
    """Pinned pip requirements: MLflow's and scikit-learn's stack, plus the
    distributions providing every estimator class in ``model``.

    Given explicitly so MLflow does not spend seconds inferring them.
    """
    distributions = set(BASE_REQUIREMENTS)
    packages = _distributions_of_packages()
    for module in _modules_of(model):
        distributions.update(packages.get(module, ()))
    pins = (_pin(name) for name in sorted(distributions, key=str.lower))
    return [pin for pin in pins if pin]


# --- logging a training run ----------------------------------------------------------


@dataclass
class LoggedRun:
    """What a logged training run left in MLflow."""

    run_id: str
    experiment_id: str
    model_uri: str  # the logged model, e.g. models:/m-<id>
    model_id: str | None = None


@dataclass
class ModelVersion:
    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's routine chatter (pickle advice, registration notices, pip
    probing) while numex logs; its errors still surface as exceptions."""
    names = (
        "mlflow",
        "mlflow.sklearn",
        "mlflow.utils.environment",
        "mlflow.models.model",
        "mlflow.tracking._model_registry.fluent",
        "mlflow.store.db.utils",
    )
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    stream_enabled = MLFLOW_LOGGING_STREAM.enabled
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    # MLflow's own switch for its eprint() notices ("Created version '3' of model ...").
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = stream_enabled
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _metric_key(name: str) -> str:
    """MLflow accepts letters, digits, ``_ - . / :`` and spaces in metric names."""
    return "".join(ch if ch.isalnum() or ch in "_-./: " else "_" for ch in name)


@dataclass
class DatasetLog:
    """A data frame to log as a run input, with numex's digest of it."""

    frame: pd.DataFrame
    name: str
    digest: str  # numex's "sha256:<hex>"
    context: str  # "training", "evaluation"
    source: str | None = None
    target: str | None = None

    @property
    def mlflow_digest(self) -> str:
        """MLflow stores at most 36 characters of a dataset digest: the hex's first 32."""
        return self.digest.split(":", 1)[-1][:32]


def log_training_run(
    settings: Settings,
    *,
    experiment_name: str,
    run_name: str,
    model: Any,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    datasets: list[DatasetLog],
    detail_metrics: Mapping[str, float] | None = None,
    signature_input: pd.DataFrame,
    signature_output: Any,
    description: str = "",
) -> LoggedRun:
    """Log one training run: tags, ``metrics`` (also attached to the logged model), each
    dataset as an input (its digest numex's, the full one kept in its source), the
    fitted ``model`` as an sklearn model with an explicit signature and pinned pip
    requirements, then params and ``detail_metrics`` (run only, e.g. per segment).

    The run ends FINISHED; on any error it ends FAILED and the error propagates.
    """
    import mlflow
    import mlflow.data
    import mlflow.sklearn
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    configure(settings)
    experiment_id = ensure_experiment(settings, experiment_name)
    mlflow_client = client(settings)
    with _quiet_mlflow(), warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values; numex's cases have
        # every feature present (rows without are not forecast), so the hint is noise.
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        # Started with an explicit experiment id: whatever experiment the process has
        # made active (mlflow.set_experiment) does not matter. An error inside ends the
        # run FAILED and propagates.
        run_tags = {k: str(v) for k, v in tags.items()}
        try:
            active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags)
        except MlflowException:
            # The experiment id was remembered from earlier; it may have been deleted since.
            _experiment_ids.pop((settings.mlflow_tracking_uri, experiment_name), None)
            experiment_id = ensure_experiment(settings, experiment_name)
            active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags)
        with active as run:
            run_id = run.info.run_id
            now = run.info.start_time

            def metric_list(values: Mapping[str, float] | None) -> list[Metric]:
                return [
                    Metric(_metric_key(k), float(v), now, 0)
                    for k, v in (values or {}).items()
                    if v is not None
                ]

            if metrics:
                mlflow_client.log_batch(run_id, metrics=metric_list(metrics))
            inputs = []
            for data in datasets:
                source = CodeDatasetSource(
                    {"numex.source": data.source or data.name, "numex.digest": data.digest}
                )
                dataset = mlflow.data.from_pandas(
                    data.frame,
                    source=source,
                    targets=data.target,
                    name=data.name,
                    digest=data.mlflow_digest,
                )
                inputs.append(_dataset_input(dataset, context=data.context))
            if inputs:
                mlflow_client.log_inputs(run_id, datasets=inputs)
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                pip_requirements=pip_requirements_for(model),
                signature=infer_signature(signature_input, signature_output),
                input_example=None,
                serialization_format="cloudpickle",
            )
            # After the model: MLflow copies the run's metrics so far onto the logged
            # model, and the per-segment detail belongs to the run only.
            mlflow_client.log_batch(
                run_id,
                metrics=metric_list(detail_metrics),
                params=[Param(k, _param_value(v)) for k, v in params.items()],
                tags=[RunTag("mlflow.note.content", description)] if description else [],
            )
    return LoggedRun(
        run_id=run_id,
        experiment_id=experiment_id,
        model_uri=info.model_uri,
        model_id=getattr(info, "model_id", None),
    )


def _dataset_input(dataset: Any, context: str) -> Any:
    from mlflow.entities import DatasetInput, InputTag

    return DatasetInput(
        dataset=dataset._to_mlflow_entity(),
        tags=[InputTag(key="mlflow.data.context", value=context)],
    )


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value) if value is not None else "None"
    # MLflow caps a parameter value at 6000 characters.
    return text if len(text) <= 6000 else text[:5997] + "..."


def register_model_version(
    settings: Settings,
    *,
    name: str,
    source_uri: str,
    tags: Mapping[str, str] | None = None,
) -> ModelVersion:
    """Register ``source_uri`` (a logged model, ``runs:/`` or ``models:/`` URI) as a new
    version of the registered model ``name`` (created on first use)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    configure(settings)
    mlflow_client = client(settings)
    with _quiet_mlflow():
        key = (settings.mlflow_registry_uri, name)
        if key not in _registered_models:
            try:
                mlflow_client.get_registered_model(name)
            except MlflowException:
                with contextlib.suppress(MlflowException):  # created concurrently: fine
                    mlflow_client.create_registered_model(
                        name, description="numex routine; its versions are its candidates"
                    )
            _registered_models.add(key)
        version = mlflow.register_model(
            source_uri, name, tags={k: str(v) for k, v in (tags or {}).items()}
        )
    return ModelVersion(name=name, version=str(version.version))


def mark_orphaned(
    settings: Settings,
    *,
    run_id: str | None,
    model_version: ModelVersion | None,
    reason: str,
) -> None:
    """Mark what a registration left in MLflow when numex could not record the
    candidate: the run ends FAILED and both carry ``numex.orphan`` with the reason.
    Best effort: failures here are logged, never raised over the original error."""
    try:
        mlflow_client = client(settings)
        if run_id:
            mlflow_client.set_tag(run_id, TAG_ORPHAN, reason[:4000])
            mlflow_client.set_terminated(run_id, "FAILED")
        if model_version:
            mlflow_client.set_model_version_tag(
                model_version.name, model_version.version, TAG_ORPHAN, reason[:4000]
            )
    except Exception:  # pragma: no cover - MLflow down as well; the original error wins
        logging.getLogger(__name__).exception("could not mark MLflow run %s as orphaned", run_id)


# --- reading models and runs ---------------------------------------------------------


@dataclass
class ModelSource:
    """Where a model URI leads: the run that logged it and, when registered, its version."""

    uri: str
    run_id: str | None
    experiment_id: str | None
    registered_name: str | None = None
    version: str | None = None
    model_id: str | None = None
    source: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def resolve_model_uri(settings: Settings, uri: str) -> ModelSource:
    """Resolve a ``models:/name/version``, ``models:/name@alias``, ``models:/m-<id>``
    or ``runs:/<run_id>/<path>`` URI to its run and registered version.

    Raises MlflowBridgeError naming the URI when MLflow does not know it.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    try:
        if uri.startswith("runs:/"):
            rest = uri[len("runs:/") :].strip("/")
            run_id = rest.split("/", 1)[0]
            if not run_id:
                raise MlflowBridgeError(f"model URI {uri!r} names no run: use runs:/<run_id>/model")
            run = mlflow_client.get_run(run_id)
            return ModelSource(uri=uri, run_id=run_id, experiment_id=run.info.experiment_id)
        if uri.startswith("models:/"):
            rest = uri[len("models:/") :].strip("/")
            if rest.startswith("m-") and "/" not in rest and "@" not in rest:
                logged = mlflow_client.get_logged_model(rest)
                return ModelSource(
                    uri=uri,
                    run_id=logged.source_run_id,
                    experiment_id=logged.experiment_id,
                    model_id=logged.model_id,
                )
            if "@" in rest:
                name, alias = rest.split("@", 1)
                version = mlflow_client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = rest.rpartition("/")
                if not name or not number:
                    raise MlflowBridgeError(
                        f"model URI {uri!r} is not models:/<name>/<version> or "
                        "models:/<name>@<alias>"
                    )
                if number == "latest":
                    found = mlflow_client.search_model_versions(f"name = '{name}'")
                    if not found:
                        raise MlflowBridgeError(f"registered model {name!r} has no versions")
                    version = max(found, key=lambda v: int(v.version))
                else:
                    version = mlflow_client.get_model_version(name, number)
            run = mlflow_client.get_run(version.run_id) if version.run_id else None
            return ModelSource(
                uri=uri,
                run_id=version.run_id,
                experiment_id=run.info.experiment_id if run else None,
                registered_name=version.name,
                version=str(version.version),
                model_id=getattr(version, "model_id", None),
                source=version.source,
                tags=dict(version.tags or {}),
            )
    except MlflowException as error:
        raise MlflowBridgeError(f"MLflow does not know model {uri!r}: {_short(error)}") from error
    raise MlflowBridgeError(
        f"model URI {uri!r} is not supported: use models:/<name>/<version> or runs:/<run_id>/<path>"
    )


#: (tracking URI, name) → id of MLflow experiments numex has looked up in this process.
_experiment_ids: dict[tuple[str, str], str] = {}
_model_cache: dict[tuple[str, str, str], Any] = {}
#: (registry URI, name) of registered models known to exist: checked once per process.
_registered_models: set[tuple[str, str]] = set()
_model_cache_lock = threading.Lock()


def _immutable_uri(settings: Settings, uri: str) -> str:
    """Aliases move; cache by the version an alias points at right now."""
    if uri.startswith("models:/") and "@" in uri:
        source = resolve_model_uri(settings, uri)
        return f"models:/{source.registered_name}/{source.version}"
    return uri


def load_model(settings: Settings, uri: str) -> Any:
    """The pyfunc model at ``uri``, loaded once per process and store."""
    from mlflow.exceptions import MlflowException

    configure(settings)
    key_uri = _immutable_uri(settings, uri)
    key = (settings.mlflow_tracking_uri, settings.mlflow_registry_uri, key_uri)
    model = _model_cache.get(key)
    if model is not None:
        return model
    with _model_cache_lock:
        model = _model_cache.get(key)
        if model is None:
            import mlflow.pyfunc

            try:
                with _quiet_mlflow():
                    model = mlflow.pyfunc.load_model(key_uri)
            except MlflowException as error:
                raise MlflowBridgeError(f"cannot load model {uri!r}: {_short(error)}") from error
            except OSError as error:
                raise MlflowBridgeError(f"cannot load model {uri!r}: {error}") from error
            _model_cache[key] = model
    return model


def clear_model_cache() -> None:
    """Forget every loaded model (tests; after a registry change)."""
    with _model_cache_lock:
        _model_cache.clear()


def signature_columns(model: Any) -> list[str] | None:
    """The input column names of a loaded pyfunc model's signature; None without one
    (or when its inputs are unnamed tensors)."""
    metadata = getattr(model, "metadata", None)
    schema = metadata.get_input_schema() if metadata is not None else None
    if schema is None or not schema.has_input_names():
        return None
    return list(schema.input_names())


def model_signature_columns(settings: Settings, uri: str) -> list[str] | None:
    """The input columns of the model at ``uri``, read from its MLmodel file."""
    import mlflow.models
    from mlflow.exceptions import MlflowException

    configure(settings)
    try:
        with _quiet_mlflow():
            info = mlflow.models.get_model_info(uri)
    except MlflowException as error:
        raise MlflowBridgeError(f"cannot read model {uri!r}: {_short(error)}") from error
    schema = info.signature.inputs if info.signature is not None else None
    if schema is None or not schema.has_input_names():
        return None
    return list(schema.input_names())


def run_info(settings: Settings, run_id: str) -> dict[str, Any]:
    """A run's status, params, metrics, tags and dataset inputs (as plain data)."""
    run = client(settings).get_run(run_id)
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
        "inputs": [
            {
                "name": d.dataset.name,
                "digest": d.dataset.digest,
                "context": {t.key: t.value for t in d.tags}.get("mlflow.data.context"),
            }
            for d in (run.inputs.dataset_inputs if run.inputs else [])
        ],
    }


def model_version_info(settings: Settings, name: str, version: str) -> dict[str, Any]:
    """A registered model version's source, run, tags and aliases."""
    found = client(settings).get_model_version(name, version)
    return {
        "name": found.name,
        "version": str(found.version),
        "source": found.source,
        "run_id": found.run_id,
        "tags": dict(found.tags or {}),
        "aliases": list(getattr(found, "aliases", []) or []),
    }


# --- registry follow-ups (delivered by registry sync) --------------------------------


def set_alias(settings: Settings, name: str, alias: str, version: str) -> None:
    """Point ``alias`` of the registered model ``name`` at ``version``."""
    client(settings).set_registered_model_alias(name, alias, str(version))


def delete_alias(settings: Settings, name: str, alias: str) -> None:
    """Remove ``alias`` from the registered model ``name`` (no error when the alias or the
    model is absent; an unreachable registry still raises, so a sync never mistakes an
    outage for success)."""
    from mlflow.exceptions import MlflowException

    try:
        client(settings).delete_registered_model_alias(name, alias)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def get_alias(settings: Settings, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(settings).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_version_tag(settings: Settings, name: str, version: str, key: str, value: str) -> None:
    """Set a tag on one registered model version."""
    client(settings).set_model_version_tag(name, str(version), key, str(value))


_fail_fast_lock = threading.Lock()


@contextlib.contextmanager
def fail_fast(timeout_s: float) -> Iterator[None]:
    """MLflow HTTP calls made inside give up after one attempt of at most ``timeout_s``
    seconds instead of MLflow's default retries with backoff (minutes against a stopped
    server). Used by registry sync so an outage is reported at once.

    MLflow reads these settings from the environment on every request, so this is
    process-wide for its duration: other threads' MLflow calls meanwhile fail fast too.
    """
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))),
    }
    with _fail_fast_lock:
        saved = {name: os.environ.get(name) for name in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def ping_registry(settings: Settings, timeout_s: float) -> None:
    """Raise MlflowBridgeError unless the registry answers within ``timeout_s``.

    Only a tracking server is probed (its ``/health`` endpoint, without importing
    mlflow); a local store is always there.
    """
    uri = settings.mlflow_registry_uri
    if uri.split(":", 1)[0] not in ("http", "https"):
        return
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status != 200:
                raise MlflowBridgeError(f"MLflow at {uri} is unhealthy: HTTP {response.status}")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise MlflowBridgeError(f"MLflow at {uri} is unreachable: {reason}") from error


def run_url(settings: Settings, experiment_id: str | None, run_id: str | None) -> str | None:
    """A link to the run in MLflow's UI, when ``NUMEX_MLFLOW_UI_URL`` is set."""
    if not settings.mlflow_ui_url or not run_id or not experiment_id:
        return None
    base = settings.mlflow_ui_url.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def model_version_url(settings: Settings, name: str | None, version: str | None) -> str | None:
    """A link to a registered model version in MLflow's UI, when configured."""
    if not settings.mlflow_ui_url or not name or not version:
        return None
    base = settings.mlflow_ui_url.rstrip("/")
    return f"{base}/#/models/{quote(name, safe='')}/versions/{version}"


def _short(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error)
    return message.strip().splitlines()[0][:500] if message else type(error).__name__
