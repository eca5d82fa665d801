"""Experiments: loading routines, registering candidates with lineage, bootstrapping.

A candidate comes from an **experiment spec** (train on the routine's training
period, score on its holdout, log to MLflow, register a model version) or from
a model already in MLflow (**bring your own**: a ``models:/`` or ``runs:/`` URI).
Either way numex records its lineage — spec digest, data digest, code version,
parameters, offline scores, the MLflow run and model version — and an audit
event, in one transaction after MLflow has the run.

The **lineage digest** identifies what a candidate is made of::

    lineage = sha256(canonical_json({routine: routine_digest, spec: spec_digest,
                                     data: data_digest, code: {commit, dirty}}))

so registering the same spec on the same data with the same code again creates
nothing and names the candidate that already exists.

``offline_scores`` of a candidate (see :func:`evaluate`)::

    {"period": "2013-07-01..2013-12-31", "n_cases": 552,
     "overall": {"rmse": 3.1, "mae": 2.4, "bias": -0.2},
     "segments": {"lead": {"1": {"n_cases": 184, "rmse": 2.6, ...}, ...},
                  "season": {"JJA": {...}, ...}}}
"""

from __future__ import annotations

import math
import re
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from numex import mlflow_bridge, specs
from numex.db import Candidate, Routine, RoutineVersion, StageTransition
from numex.services import audit, stages
from numex.services.errors import Conflict, InvalidInput, NotFound
from numex.services.routines import get_routine
from numex.services.runtime import Actor, Runtime

Progress = Callable[[str], None]

#: Metric names in routine specs → names in numex.scoring.metrics.
_SCORING_NAMES = {"log_loss": "logloss"}
_NAME = re.compile(r"^[a-z0-9]+(?:[-_.][a-z0-9]+)*$")


def _quiet(_message: str) -> None:
    pass


# --- routines ------------------------------------------------------------------------


@dataclass
class RoutineLoad:
    """What ``load_routine`` did."""

    routine: str
    version: int
    digest: str
    status: str  # "created", "updated" (a new version) or "unchanged"
    changed_fields: list[str] = field(default_factory=list)
    n_rows: int = 0

    @property
    def message(self) -> str:
        if self.status == "created":
            return f"routine {self.routine} created (version 1, {self.n_rows} rows of data)"
        if self.status == "updated":
            return (
                f"routine {self.routine}: definition changed "
                f"({', '.join(self.changed_fields)}); recorded as version {self.version}"
            )
        return f"routine {self.routine} unchanged (version {self.version})"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "message": self.message}


def registered_model_name(routine: str) -> str:
    """The MLflow registered model holding a routine's candidates."""
    return f"numex.{routine}"


def _definition(spec: specs.RoutineSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def load_routine(rt: Runtime, path: Path | str, actor: Actor) -> RoutineLoad:
    """Create or update a routine from its ``routine.yaml`` (or its folder).

    The spec is validated and its data source loaded (every declared column must
    be there). A definition that differs from the routine's current one is
    recorded as a new :class:`RoutineVersion` — never a silent overwrite; an
    identical one changes nothing. Audited as ``routine.created`` /
    ``routine.version_added``.
    """
    actor.require("scientist", "admin", to="load a routine")
    spec = specs.load_routine(path)
    frame = specs.load_routine_data(spec)
    definition = _definition(spec)
    digest = specs.spec_digest(spec)
    folder = str(spec.folder.resolve()) if spec.folder else None
    with rt.transaction() as session:
        routine = session.scalar(select(Routine).where(Routine.name == spec.name))
        if routine is None:
            routine = Routine(
                name=spec.name,
                title=spec.title,
                source_dir=folder,
                registered_model_name=registered_model_name(spec.name),
            )
            session.add(routine)
            session.flush()
            _add_version(session, routine, 1, definition, digest, actor)
            audit.record(
                session,
                actor,
                "routine.created",
                "routine",
                routine.id,
                {"version": 1, "digest": digest, "source_dir": folder},
                routine=spec.name,
            )
            return RoutineLoad(spec.name, 1, digest, "created", n_rows=len(frame))
        current = routine.current
        if current.digest == digest:
            if folder and routine.source_dir != folder:
                audit.record(
                    session,
                    actor,
                    "routine.moved",
                    "routine",
                    routine.id,
                    {"from": routine.source_dir, "to": folder},
                    routine=spec.name,
                )
                routine.source_dir = folder
            return RoutineLoad(spec.name, current.version, digest, "unchanged", n_rows=len(frame))
        changed = sorted(
            key
            for key in set(definition) | set(current.definition)
            if definition.get(key) != current.definition.get(key)
        )
        version = current.version + 1
        _add_version(session, routine, version, definition, digest, actor)
        routine.title = spec.title
        routine.source_dir = folder or routine.source_dir
        audit.record(
            session,
            actor,
            "routine.version_added",
            "routine",
            routine.id,
            {
                "version": version,
                "digest": digest,
                "previous_digest": current.digest,
                "changed": changed,
            },
            routine=spec.name,
        )
        return RoutineLoad(spec.name, version, digest, "updated", changed, n_rows=len(frame))


def _add_version(
    session: Session,
    routine: Routine,
    version: int,
    definition: dict[str, Any],
    digest: str,
    actor: Actor,
) -> RoutineVersion:
    row = RoutineVersion(
        routine_id=routine.id,
        version=version,
        definition=definition,
        digest=digest,
        created_by=actor.name,
    )
    session.add(row)
    routine.versions.append(row)
    session.flush()
    return row


def routine_spec(routine: Routine, version: RoutineVersion | None = None) -> specs.RoutineSpec:
    """The validated spec of a routine's current (or given) recorded definition, with its
    folder set so data sources and factories resolve."""
    version = version or routine.current
    try:
        spec = specs.RoutineSpec.model_validate(version.definition)
    except ValueError as error:  # a definition recorded by an older numex
        raise InvalidInput(
            f"routine {routine.name} version {version.version} cannot be read by this numex "
            f"version: {error}; reload it with `numex routine load`"
        ) from error
    if routine.source_dir:
        spec._file = Path(routine.source_dir) / specs.ROUTINE_FILE
    return spec


# --- code version and lineage --------------------------------------------------------


@dataclass(frozen=True)
class CodeVersion:
    """The git commit of the repository holding an experiment, and whether its working
    tree had uncommitted changes; both None outside a git checkout."""

    commit: str | None
    dirty: bool | None


def code_version(folder: Path | str) -> CodeVersion:
    """``git rev-parse HEAD`` and ``git status --porcelain`` of ``folder``'s repository."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(folder), *args],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return CodeVersion(None, None)
    status = git("status", "--porcelain")
    return CodeVersion(commit.strip(), bool(status and status.strip()))


def lineage_digest(
    *, routine_digest: str, spec_digest: str, data_digest: str, code: CodeVersion
) -> str:
    """The digest naming a candidate's inputs: routine, spec, data and code version."""
    return audit.digest(
        {
            "routine": routine_digest,
            "spec": spec_digest,
            "data": data_digest,
            "code": {"commit": code.commit, "dirty": code.dirty},
        }
    )


def _existing(session: Session, routine_id: int, lineage: str) -> Candidate | None:
    return session.scalar(
        select(Candidate).where(
            Candidate.routine_id == routine_id, Candidate.lineage_digest == lineage
        )
    )


def _duplicate(candidate: Candidate, what: str, code: CodeVersion | None = None) -> Conflict:
    hint = ""
    if code is not None and code.dirty:
        hint = (
            " (the working tree had uncommitted changes both times: commit them to "
            "register changed code)"
        )
    return Conflict(
        f"{what} is already registered as candidate {candidate.name} (#{candidate.id}, "
        f"stage {candidate.stage}){hint}",
        details={"candidate_id": candidate.id, "candidate": candidate.name},
    )


def _free_name(session: Session, routine_id: int, wanted: str) -> str:
    taken = set(
        session.scalars(
            select(Candidate.name).where(
                Candidate.routine_id == routine_id, Candidate.name.like(f"{wanted}%")
            )
        )
    )
    if wanted not in taken:
        return wanted
    n = 2
    while f"{wanted}-{n}" in taken:
        n += 1
    return f"{wanted}-{n}"


def _check_name(name: str) -> str:
    if not _NAME.match(name) or len(name) > 200:
        raise InvalidInput(
            f"candidate name {name!r} is not valid; valid: lowercase letters, digits and "
            "single '-', '_' or '.' between them, e.g. 'ridge-v2'"
        )
    return name


# --- evaluation ----------------------------------------------------------------------


def _clean(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def evaluate(
    routine: specs.RoutineSpec,
    holdout: pd.DataFrame,
    forecast: np.ndarray,
) -> dict[str, Any]:
    """Every routine metric on the holdout cases, overall and per segment value.

    ``holdout`` holds the cases (with target and segment columns) in the order of
    ``forecast``; pairs with a missing value are left out. Scores come from
    :mod:`numex.scoring.metrics` as the scorecard computes them: each metric's
    per-case quantities (``e``, ``|e|``, ``e²``…) are summed per segment value and
    the metric turns the sums into its score.
    """
    from numex.scoring import metrics as scoring

    observation = holdout[routine.target].to_numpy(dtype=float)
    forecast = np.asarray(forecast, dtype=float).ravel()
    keep = ~(np.isnan(forecast) | np.isnan(observation))
    f, o = forecast[keep], observation[keep]
    chosen = {name: scoring.get_metric(_SCORING_NAMES.get(name, name)) for name in routine.metrics}
    quantities: dict[str, np.ndarray] = {}
    for metric in chosen.values():
        scoring.check_observations(metric, f, o)
        for quantity in metric.quantities:
            if quantity not in quantities:
                quantities[quantity] = scoring.QUANTITIES[quantity](f, o)

    def cell_scores(sums: dict[str, np.ndarray], n: np.ndarray, group: int) -> dict[str, Any]:
        count = float(n[group])
        if count == 0:
            return dict.fromkeys(chosen)
        cell = {q: values[group : group + 1] for q, values in sums.items()}
        return {
            name: _clean(metric.total_score(cell, n[group : group + 1]))
            for name, metric in chosen.items()
        }

    total = {q: np.array([values.sum()]) for q, values in quantities.items()}
    overall = cell_scores(total, np.array([float(f.size)]), 0)
    segments: dict[str, dict[str, dict[str, Any]]] = {}
    values = specs.segment_values(holdout.loc[keep], routine)
    for segment in routine.segments:
        codes, labels = pd.factorize(values[segment.name], sort=False)
        size = len(labels)
        n = np.bincount(codes, minlength=size).astype(float)
        sums = {q: np.bincount(codes, weights=v, minlength=size) for q, v in quantities.items()}
        cells = {
            _segment_label(label): {"n_cases": int(n[group]), **cell_scores(sums, n, group)}
            for group, label in enumerate(labels)
        }
        segments[segment.name] = dict(sorted(cells.items(), key=lambda kv: _natural(kv[0])))
    return {
        "period": str(routine.holdout),
        "n_cases": int(f.size),
        "overall": overall,
        "segments": segments,
    }


def _segment_label(value: Any) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _natural(label: str) -> tuple[int, float | str]:
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def _mlflow_metrics(scores: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(overall, per segment) holdout scores as MLflow metrics: ``holdout_rmse``,
    ``holdout_rmse/lead/1``..."""
    overall = {f"holdout_{k}": v for k, v in scores["overall"].items() if v is not None}
    overall["holdout_n_cases"] = float(scores["n_cases"])
    detail = {}
    for segment, cells in scores["segments"].items():
        for label, cell in cells.items():
            for metric, value in cell.items():
                if metric != "n_cases" and value is not None:
                    detail[f"holdout_{metric}/{segment}/{label}"] = value
    return overall, detail


def _usable(frame: pd.DataFrame, features: Sequence[str], target: str) -> pd.DataFrame:
    """Rows with a target and every feature present (those a score can be given for)."""
    return frame.loc[frame[[*features, target]].notna().all(axis=1)]


# --- estimator parameters ------------------------------------------------------------


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def estimator_params(spec: specs.ExperimentSpec, estimator: Any) -> dict[str, Any]:
    """The parameters worth recording: the estimator's reference, the seed, and every
    plain (scalar) parameter of the estimator and its nested steps."""
    reference = spec.estimator.class_ or spec.estimator.factory
    params: dict[str, Any] = {"estimator": reference, "seed": spec.seed}
    if hasattr(estimator, "get_params"):
        for key, value in sorted(estimator.get_params(deep=True).items()):
            if _plain(value) and not (isinstance(value, float) and not math.isfinite(value)):
                params[key] = value
            elif isinstance(value, np.integer | np.floating):
                params[key] = value.item()
    return params


# --- registering an experiment -------------------------------------------------------


@dataclass
class Registration:
    """What a registration created."""

    candidate_id: int
    name: str
    routine: str
    stage: str
    model_uri: str
    mlflow_run_id: str | None
    lineage_digest: str
    offline_scores: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        primary = next(iter(self.offline_scores.get("overall", {}).items()), None)
        score = f"; holdout {primary[0]} {primary[1]:.4g}" if primary and primary[1] else ""
        return (
            f"candidate {self.name} (#{self.candidate_id}) registered for routine "
            f"{self.routine} at stage {self.stage}: {self.model_uri}{score}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "message": self.message}


@dataclass
class _Prepared:
    """An experiment ready to train: its spec, routine, data and lineage."""

    experiment: specs.ExperimentSpec
    routine_spec: specs.RoutineSpec
    routine_id: int
    routine_version_id: int
    registered_model_name: str
    training: pd.DataFrame
    holdout: pd.DataFrame
    spec_digest: str
    data_digest: str
    training_digest: str
    holdout_digest: str
    code: CodeVersion
    lineage: str


def _prepare(rt: Runtime, path: Path, progress: Progress) -> _Prepared:
    folder_routine = specs.load_routine(path.parent)
    experiment = specs.load_experiment(path, folder_routine)
    with rt.read() as session:
        routine = get_routine(session, experiment.routine)
        version = routine.current
        if version.digest != specs.spec_digest(folder_routine):
            raise Conflict(
                f"{folder_routine.file} differs from routine {routine.name}'s recorded "
                f"definition (version {version.version}); record it first with "
                f"`numex routine load {path.parent}`"
            )
        routine_id, version_id = routine.id, version.id
        model_name, routine_digest = routine.registered_model_name, version.digest
    # git runs in its own processes: let it work while the data loads.
    found: list[CodeVersion] = []
    git = threading.Thread(target=lambda: found.append(code_version(path.parent)), daemon=True)
    git.start()
    progress(f"loading data for {folder_routine.name}")
    frame = specs.load_routine_data(folder_routine)
    columns = list(dict.fromkeys([*folder_routine.case_keys, *experiment.features]))
    columns += [c for c in (folder_routine.target,) if c not in columns]
    columns += [s.column for s in folder_routine.segments if s.column and s.column not in columns]
    training = _usable(
        specs.training_frame(frame, folder_routine, experiment),
        experiment.features,
        folder_routine.target,
    )
    holdout = _usable(
        specs.holdout_frame(frame, folder_routine), experiment.features, folder_routine.target
    )
    if training.empty:
        raise InvalidInput(
            f"{path}: no usable training cases in {experiment.training} (rows with the "
            f"target and every feature present)"
        )
    if holdout.empty:
        raise InvalidInput(
            f"{path}: routine {folder_routine.name} has no usable holdout cases in "
            f"{folder_routine.holdout}"
        )
    training_digest = specs.data_digest(training[columns])
    holdout_digest = specs.data_digest(holdout[columns])
    data_digest = audit.digest({"training": training_digest, "holdout": holdout_digest})
    spec_digest = specs.spec_digest(experiment)
    git.join()
    code = found[0] if found else CodeVersion(None, None)
    lineage = lineage_digest(
        routine_digest=routine_digest, spec_digest=spec_digest, data_digest=data_digest, code=code
    )
    return _Prepared(
        experiment=experiment,
        routine_spec=folder_routine,
        routine_id=routine_id,
        routine_version_id=version_id,
        registered_model_name=model_name,
        training=training,
        holdout=holdout,
        spec_digest=spec_digest,
        data_digest=data_digest,
        training_digest=training_digest,
        holdout_digest=holdout_digest,
        code=code,
        lineage=lineage,
    )


def train_experiment(
    experiment: specs.ExperimentSpec, routine: specs.RoutineSpec, training: pd.DataFrame
) -> Any:
    """A fresh estimator built from the spec and fitted on ``training`` with the spec's
    seed: equal specs and data give equal models."""
    estimator = specs.build_estimator(experiment, routine.folder)
    return specs.train(
        estimator, training, experiment.features, routine.target, seed=experiment.seed
    )


def register_experiment(
    rt: Runtime,
    path: Path | str,
    actor: Actor,
    *,
    name: str | None = None,
    progress: Progress | None = None,
) -> Registration:
    """Register the experiment spec at ``path`` as a candidate at stage ``experiment``.

    Loads the routine's data, trains with the spec's seed, scores the holdout
    (every routine metric, overall and per segment), logs the run to MLflow
    (params, metrics, the model, the data as inputs, lineage tags), registers a
    model version under the routine's registered model, then records the
    candidate and the audit event ``candidate.registered`` in one transaction.
    The same spec, data and code a second time raise Conflict naming the
    existing candidate; nothing is trained. ``name`` overrides the spec's name.
    """
    actor.require("scientist", to="register an experiment")
    progress = progress or _quiet
    path = Path(path)
    prepared = _prepare(rt, path, progress)
    experiment, routine = prepared.experiment, prepared.routine_spec
    with rt.read() as session:
        existing = _existing(session, prepared.routine_id, prepared.lineage)
        if existing is not None:
            raise _duplicate(existing, f"experiment {path}", prepared.code)
        wanted = _check_name(name or experiment.name)
        candidate_name = _free_name(session, prepared.routine_id, wanted)

    progress(f"training {experiment.name} on {len(prepared.training)} cases")
    model = train_experiment(experiment, routine, prepared.training)
    progress(f"scoring the holdout ({len(prepared.holdout)} cases)")
    inputs = prepared.holdout[experiment.features]
    forecast = np.asarray(model.predict(inputs), dtype=float)
    scores = evaluate(routine, prepared.holdout, forecast)
    params = estimator_params(experiment, model)

    progress("logging the run and the model to MLflow")
    settings = rt.settings
    tags = {
        mlflow_bridge.TAG_ROUTINE: routine.name,
        mlflow_bridge.TAG_CANDIDATE: candidate_name,
        mlflow_bridge.TAG_SPEC_DIGEST: prepared.spec_digest,
        mlflow_bridge.TAG_DATA_DIGEST: prepared.data_digest,
        mlflow_bridge.TAG_LINEAGE_DIGEST: prepared.lineage,
        mlflow_bridge.TAG_CODE_COMMIT: prepared.code.commit or "",
        mlflow_bridge.TAG_CODE_DIRTY: _flag(prepared.code.dirty),
        "numex.training_digest": prepared.training_digest,
        "numex.holdout_digest": prepared.holdout_digest,
        "numex.spec_file": str(path),
        "numex.author": experiment.author,
        "numex.registered_by": actor.name,
    }
    if prepared.code.commit:
        tags[mlflow_bridge.TAG_GIT_COMMIT] = prepared.code.commit
    overall_metrics, segment_metrics = _mlflow_metrics(scores)
    logged = mlflow_bridge.log_training_run(
        settings,
        experiment_name=mlflow_bridge.experiment_name_for(routine.name),
        run_name=candidate_name,
        model=model,
        params={
            **params,
            "numex.features": ",".join(experiment.features),
            "numex.training": str(experiment.training),
            "numex.holdout": str(routine.holdout),
        },
        metrics=overall_metrics,
        detail_metrics=segment_metrics,
        tags=tags,
        datasets=[
            mlflow_bridge.DatasetLog(
                prepared.training,
                name=f"{routine.name}-training",
                digest=prepared.training_digest,
                context="training",
                source=routine.data.source,
                target=routine.target,
            )
        ],
        signature_input=inputs.head(5),
        signature_output=forecast[:5],
        description=experiment.description,
    )
    version: mlflow_bridge.ModelVersion | None = None
    try:
        progress(f"registering a model version of {prepared.registered_model_name}")
        version = mlflow_bridge.register_model_version(
            settings,
            name=prepared.registered_model_name,
            source_uri=logged.model_uri,
            tags={
                mlflow_bridge.TAG_CANDIDATE: candidate_name,
                mlflow_bridge.TAG_STAGE: "experiment",
                mlflow_bridge.TAG_LINEAGE_DIGEST: prepared.lineage,
            },
        )
        candidate = Candidate(
            routine_id=prepared.routine_id,
            routine_version_id=prepared.routine_version_id,
            name=candidate_name,
            description=experiment.description,
            stage="experiment",
            source="experiment",
            author=experiment.author,
            author_id=actor.user_id,
            lineage_digest=prepared.lineage,
            spec=experiment.model_dump(mode="json", by_alias=True),
            spec_digest=prepared.spec_digest,
            data_digest=prepared.data_digest,
            code_commit=prepared.code.commit,
            code_dirty=prepared.code.dirty,
            params=params,
            features=list(experiment.features),
            offline_scores=scores,
            mlflow_run_id=logged.run_id,
            mlflow_experiment_id=logged.experiment_id,
            model_uri=version.uri,
            registered_model_name=version.name,
            model_version=version.version,
        )
        candidate_id = _record_candidate(rt, candidate, actor, routine.name, str(path))
    except BaseException as error:
        mlflow_bridge.mark_orphaned(
            settings,
            run_id=logged.run_id,
            model_version=version,
            reason=f"numex did not record the candidate: {type(error).__name__}: {error}"[:1000],
        )
        raise
    notes = []
    if candidate_name != (name or experiment.name):
        notes.append(
            f"a candidate named {name or experiment.name} already exists with other lineage; "
            f"this one is {candidate_name}"
        )
    return Registration(
        candidate_id=candidate_id,
        name=candidate_name,
        routine=routine.name,
        stage="experiment",
        model_uri=version.uri,
        mlflow_run_id=logged.run_id,
        lineage_digest=prepared.lineage,
        offline_scores=scores,
        notes=notes,
    )


def _flag(value: bool | None) -> str:
    return "" if value is None else str(value).lower()


def _record_candidate(
    rt: Runtime, candidate: Candidate, actor: Actor, routine_name: str, origin: str
) -> int:
    """Insert the candidate and its audit event; a concurrent twin becomes a Conflict."""
    try:
        with rt.transaction() as session:
            session.add(candidate)
            session.flush()
            audit.record(
                session,
                actor,
                "candidate.registered",
                "candidate",
                candidate.id,
                {
                    "candidate": candidate.name,
                    "source": candidate.source,
                    "origin": origin,
                    "model_uri": candidate.model_uri,
                    "mlflow_run_id": candidate.mlflow_run_id,
                    "lineage_digest": candidate.lineage_digest,
                    "spec_digest": candidate.spec_digest,
                    "data_digest": candidate.data_digest,
                    "code_commit": candidate.code_commit,
                    "code_dirty": candidate.code_dirty,
                },
                routine=routine_name,
            )
            return candidate.id
    except IntegrityError as error:
        with rt.read() as session:
            twin = _existing(session, candidate.routine_id, candidate.lineage_digest)
            if twin is not None:
                raise _duplicate(twin, "this candidate") from error
            same_name = session.scalar(
                select(Candidate).where(
                    Candidate.routine_id == candidate.routine_id, Candidate.name == candidate.name
                )
            )
            if same_name is not None:
                raise Conflict(
                    f"a candidate named {candidate.name} was registered meanwhile "
                    f"(#{same_name.id}); register again or choose another name"
                ) from error
        raise


# --- bring your own model ------------------------------------------------------------


def _default_name(source: mlflow_bridge.ModelSource) -> str:
    if source.registered_name and source.version:
        base = f"{source.registered_name}-v{source.version}"
    elif source.model_id:
        base = source.model_id
    else:
        base = f"run-{(source.run_id or 'model')[:8]}"
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    return slug or "model"


def _same_model(
    session: Session, routine_id: int, model_name: str, source: mlflow_bridge.ModelSource
) -> Candidate | None:
    """A candidate of the routine already made of this model: the same registered
    version, or the same MLflow run."""
    query = select(Candidate).where(Candidate.routine_id == routine_id)
    if source.registered_name == model_name and source.version:
        found = session.scalar(
            query.where(
                Candidate.registered_model_name == model_name,
                Candidate.model_version == source.version,
            )
        )
        if found is not None:
            return found
    if source.run_id:
        return session.scalar(query.where(Candidate.mlflow_run_id == source.run_id).limit(1))
    return None


def register_model_uri(
    rt: Runtime,
    routine_name: str,
    model_uri: str,
    actor: Actor,
    *,
    name: str | None = None,
    progress: Progress | None = None,
) -> Registration:
    """Register a model already in MLflow (``models:/…`` or ``runs:/…``) as a candidate
    of ``routine_name`` at stage ``experiment``.

    The model is loaded once; its signature's input columns must all be among the
    routine's features (else InvalidInput naming the columns the routine lacks and
    the ones the model leaves out). It is scored on the routine's holdout like a
    trained experiment, registered as a version of the routine's registered model
    (unless it already is one) and recorded with the audit event
    ``candidate.registered``. The same model twice is a Conflict naming the first.
    """
    actor.require("scientist", to="register a candidate")
    progress = progress or _quiet
    model_uri = (model_uri or "").strip()
    if not model_uri.startswith(("models:/", "runs:/")):
        raise InvalidInput(
            f"model_uri {model_uri!r} is not an MLflow model URI; valid: "
            "models:/<name>/<version>, models:/<name>@<alias> or runs:/<run_id>/<path>"
        )
    if name is not None:
        _check_name(name)
    with rt.read() as session:
        routine = get_routine(session, routine_name)
        spec = routine_spec(routine)
        routine_id, version_id = routine.id, routine.current.id
        model_name = routine.registered_model_name
    settings = rt.settings
    progress(f"resolving {model_uri}")
    try:
        source = mlflow_bridge.resolve_model_uri(settings, model_uri)
    except mlflow_bridge.MlflowBridgeError as error:
        raise InvalidInput(str(error)) from error
    identity = source.model_id or source.source or model_uri
    if source.uri.startswith("runs:/"):
        identity = f"runs:/{source.run_id}/{source.uri.split('/', 3)[-1]}"
    lineage = audit.digest({"model": identity})
    with rt.read() as session:
        existing = _existing(session, routine_id, lineage) or _same_model(
            session, routine_id, model_name, source
        )
        if existing is not None:
            raise _duplicate(existing, f"model {model_uri}")
        candidate_name = _free_name(session, routine_id, name or _default_name(source))

    progress(f"loading {model_uri}")
    try:
        model = mlflow_bridge.load_model(settings, model_uri)
    except mlflow_bridge.MlflowBridgeError as error:
        raise InvalidInput(str(error)) from error
    columns = mlflow_bridge.signature_columns(model)
    if columns is None:
        raise InvalidInput(
            f"model {model_uri} has no signature naming its input columns, so numex cannot "
            f"check it against routine {spec.name}'s features ({', '.join(spec.features)}); "
            "log it with a signature (mlflow.models.infer_signature)"
        )
    extra = [c for c in columns if c not in spec.features]
    unused = [c for c in spec.features if c not in columns]
    if extra:
        raise InvalidInput(
            f"model {model_uri} does not fit routine {spec.name}: its signature expects "
            f"column(s) {', '.join(extra)} that the routine does not provide "
            f"(missing from the routine's features; extra in the model's signature); "
            f"the routine's features are {', '.join(spec.features)}"
            + (f"; the model leaves out {', '.join(unused)}" if unused else ""),
            details={"missing": extra, "unused": unused, "features": list(spec.features)},
        )

    progress(f"scoring the holdout of {spec.name}")
    try:
        frame = specs.load_routine_data(spec)
    except specs.SpecError as error:  # the data moved since the routine was loaded
        raise InvalidInput(f"routine {spec.name}'s data cannot be loaded: {error}") from error
    holdout = _usable(specs.holdout_frame(frame, spec), columns, spec.target)
    try:
        forecast = np.asarray(model.predict(holdout[columns]), dtype=float).ravel()
    except Exception as error:
        raise InvalidInput(
            f"model {model_uri} failed to forecast routine {spec.name}'s holdout cases: "
            f"{type(error).__name__}: {str(error)[:300]}"
        ) from error
    if len(forecast) != len(holdout):
        raise InvalidInput(
            f"model {model_uri} returned {len(forecast)} forecasts for {len(holdout)} cases"
        )
    scores = evaluate(spec, holdout, forecast)

    version: mlflow_bridge.ModelVersion | None = None
    created_version = False
    if source.registered_name == model_name and source.version:
        version = mlflow_bridge.ModelVersion(model_name, source.version)
    try:
        if version is None:
            progress(f"registering a model version of {model_name}")
            version = mlflow_bridge.register_model_version(
                settings,
                name=model_name,
                source_uri=source.source or model_uri,
                tags={
                    mlflow_bridge.TAG_CANDIDATE: candidate_name,
                    mlflow_bridge.TAG_STAGE: "experiment",
                    mlflow_bridge.TAG_LINEAGE_DIGEST: lineage,
                    "numex.registered_from": model_uri,
                },
            )
            created_version = True
        candidate = Candidate(
            routine_id=routine_id,
            routine_version_id=version_id,
            name=candidate_name,
            description=f"brought from {model_uri}",
            stage="experiment",
            source="model_uri",
            author=actor.name,
            author_id=actor.user_id,
            lineage_digest=lineage,
            spec=None,
            spec_digest=None,
            data_digest=None,
            code_commit=source.tags.get(mlflow_bridge.TAG_CODE_COMMIT) or None,
            code_dirty=None,
            params={"model_uri": model_uri},
            features=columns,
            offline_scores=scores,
            mlflow_run_id=source.run_id,
            mlflow_experiment_id=source.experiment_id,
            model_uri=version.uri,
            registered_model_name=version.name,
            model_version=version.version,
        )
        candidate_id = _record_candidate(rt, candidate, actor, spec.name, model_uri)
    except BaseException as error:
        if created_version:
            mlflow_bridge.mark_orphaned(
                settings,
                run_id=None,
                model_version=version,
                reason=f"numex did not record the candidate: {type(error).__name__}: {error}",
            )
        raise
    notes = [f"the model leaves out routine feature(s) {', '.join(unused)}"] if unused else []
    return Registration(
        candidate_id=candidate_id,
        name=candidate_name,
        routine=spec.name,
        stage="experiment",
        model_uri=version.uri,
        mlflow_run_id=source.run_id,
        lineage_digest=lineage,
        offline_scores=scores,
        notes=notes,
    )


# --- bootstrap -----------------------------------------------------------------------


def _find_candidate(session: Session, routine: Routine, reference: str | int) -> Candidate:
    text = str(reference).strip().lstrip("#")
    query = select(Candidate).where(Candidate.routine_id == routine.id)
    if text.isdigit():
        found = session.scalar(query.where(Candidate.id == int(text)))
    else:
        found = session.scalar(query.where(Candidate.name == text))
    if found is None:
        known = session.scalars(query.with_only_columns(Candidate.name).order_by(Candidate.id))
        raise NotFound(
            f"routine {routine.name} has no candidate {reference!r}; its candidates: "
            f"{', '.join(known) or 'none yet'}"
        )
    return found


def bootstrap(
    rt: Runtime,
    routine_name: str,
    candidate: str | int,
    actor: Actor,
    *,
    reason: str = "",
) -> list[dict[str, Any]]:
    """Make ``candidate`` (a name or id) the routine's first operational candidate.

    Allowed only while the routine has no operational candidate. The candidate
    moves through the lifecycle's own steps (experiment → parallel → operational),
    each a transition of kind ``bootstrap`` written by :func:`numex.services.stages.move`,
    plus the audit event ``routine.bootstrapped``. Returns the transitions.
    """
    actor.require("ops", "admin", to="bootstrap a routine")
    with rt.transaction() as session:
        routine = get_routine(session, routine_name)
        current = stages.operational_of(session, routine.id, lock=True)
        if current is not None:
            raise Conflict(
                f"routine {routine.name} already has an operational candidate: "
                f"{current.name} (#{current.id}); bootstrap only makes the first one — "
                "replace it through a promotion request"
            )
        chosen = _find_candidate(session, routine, candidate)
        if chosen.stage not in ("experiment", "parallel"):
            raise Conflict(
                f"candidate {chosen.name} (#{chosen.id}) is {chosen.stage}; bootstrap takes a "
                "candidate at stage experiment or parallel"
            )
        why = reason or "bootstrap: first operational candidate"
        written: list[StageTransition] = []
        if chosen.stage == "experiment":
            written += stages.move(
                session, chosen, "parallel", kind="bootstrap", actor=actor, reason=why
            )
        written += stages.move(
            session, chosen, "operational", kind="bootstrap", actor=actor, reason=why
        )
        audit.record(
            session,
            actor,
            "routine.bootstrapped",
            "routine",
            routine.id,
            {"candidate": chosen.name, "candidate_id": chosen.id, "reason": why},
            routine=routine.name,
        )
        return [_transition_dict(t) for t in written]


# --- reading -------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _transition_dict(transition: StageTransition) -> dict[str, Any]:
    return {
        "id": transition.id,
        "candidate_id": transition.candidate_id,
        "from": transition.from_stage,
        "to": transition.to_stage,
        "kind": transition.kind,
        "reason": transition.reason,
        "actor": transition.actor,
        "request_id": transition.promotion_request_id,
        "at": _iso(transition.created_at),
    }


def candidate_dict(candidate: Candidate, rt: Runtime, *, detail: bool = False) -> dict[str, Any]:
    """A candidate as plain data (the API's and ``--json``'s shape)."""
    overall = (candidate.offline_scores or {}).get("overall", {})
    data: dict[str, Any] = {
        "id": candidate.id,
        "routine": candidate.routine.name,
        "name": candidate.name,
        "stage": candidate.stage,
        "source": candidate.source,
        "author": candidate.author,
        "created_at": _iso(candidate.created_at),
        "model_uri": candidate.model_uri,
        "offline": overall,
    }
    if not detail:
        return data
    settings = rt.settings
    data.update(
        {
            "description": candidate.description,
            "routine_version": _routine_version_number(candidate),
            "lineage": {
                "lineage_digest": candidate.lineage_digest,
                "spec_digest": candidate.spec_digest,
                "data_digest": candidate.data_digest,
                "code_commit": candidate.code_commit,
                "code_dirty": candidate.code_dirty,
                "mlflow_experiment_id": candidate.mlflow_experiment_id,
                "mlflow_run_id": candidate.mlflow_run_id,
                "registered_model_name": candidate.registered_model_name,
                "model_version": candidate.model_version,
                "model_uri": candidate.model_uri,
                "mlflow_run_url": mlflow_bridge.run_url(
                    settings, candidate.mlflow_experiment_id, candidate.mlflow_run_id
                ),
                "mlflow_model_url": mlflow_bridge.model_version_url(
                    settings, candidate.registered_model_name, candidate.model_version
                ),
            },
            "spec": candidate.spec,
            "params": candidate.params,
            "features": candidate.features,
            "offline_scores": candidate.offline_scores,
            "transitions": [_transition_dict(t) for t in candidate.transitions],
        }
    )
    return data


def _routine_version_number(candidate: Candidate) -> int | None:
    for version in candidate.routine.versions:
        if version.id == candidate.routine_version_id:
            return version.version
    return None


def list_candidates(
    rt: Runtime, routine: str | None = None, stage: str | None = None
) -> list[dict[str, Any]]:
    """Candidates, newest first, optionally of one routine and/or one stage."""
    from numex.lifecycle import STAGES

    if stage is not None and stage not in STAGES:
        raise InvalidInput(f"unknown stage {stage!r}; valid stages: {', '.join(STAGES)}")
    query = select(Candidate).options(selectinload(Candidate.routine))
    with rt.read() as session:
        if routine is not None:
            query = query.where(Candidate.routine_id == get_routine(session, routine).id)
        if stage is not None:
            query = query.where(Candidate.stage == stage)
        rows = session.scalars(query.order_by(Candidate.id.desc())).all()
        return [candidate_dict(c, rt) for c in rows]


def get_candidate(rt: Runtime, candidate_id: int | str) -> dict[str, Any]:
    """One candidate with its lineage, parameters, offline scores and stage history."""
    text = str(candidate_id).strip().lstrip("#")
    if not text.isdigit():
        raise InvalidInput(f"candidate id {candidate_id!r} is not a number")
    with rt.read() as session:
        candidate = session.get(
            Candidate,
            int(text),
            options=[
                selectinload(Candidate.routine).selectinload(Routine.versions),
                selectinload(Candidate.transitions),
            ],
        )
        if candidate is None:
            raise NotFound(f"no candidate #{text}")
        return candidate_dict(candidate, rt, detail=True)
