"""A small routine for experiment tests: synthetic data in a CSV, fast to train on.

``write_small_routine(folder)`` writes ``<folder>/tiny/`` with a routine.yaml, a
data.csv (two years of daily cases × two lead times) and experiment specs.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

ROUTINE_YAML = """\
name: tiny
title: A tiny synthetic routine
data: {source: data.csv}
time_column: valid_date
case_keys: [valid_date, lead]
target: y
features: [x1, x2, lead]
training: {start: 2020-01-01, end: 2020-09-30}
holdout: {start: 2020-10-01, end: 2020-12-31}
cycles: {length: 1D, start: 2021-01-01, end: 2021-12-31}
metrics: [rmse, mae, bias]
segments:
  - {name: lead, column: lead}
  - {name: season, derive: season}
gates:
  parallel:
    sign_offs: 1
    checks:
      - offline_not_worse: {metric: rmse}
  operational:
    sign_offs: 2
    checks:
      - min_cycles: 30
"""

EXPERIMENTS = {
    "ridge": """\
        routine: tiny
        name: ridge
        description: Ridge regression on every feature.
        author: sam
        estimator:
          class: sklearn.linear_model.Ridge
          params: {alpha: 1.0}
        seed: 0
        """,
    "forest": """\
        routine: tiny
        name: forest
        description: A small random forest; bootstrapping makes it depend on the seed.
        author: sam
        estimator:
          class: sklearn.ensemble.RandomForestRegressor
          params: {n_estimators: 10, max_depth: 4}
        seed: 7
        """,
    "persistence": """\
        routine: tiny
        name: persistence
        description: The first feature, as is.
        author: sam
        estimator:
          class: numex.models.Persistence
          params: {column: x1}
        features: [x1]
        seed: 0
        """,
}


def small_data(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    days = pd.date_range("2020-01-01", "2021-12-31", freq="D")
    frames = []
    for lead in (1, 2):
        x1 = rng.normal(10, 3, len(days))
        x2 = rng.normal(0, 1, len(days))
        y = 0.9 * x1 - 0.5 * x2 + rng.normal(0, 0.5 * lead, len(days))
        frames.append(pd.DataFrame({"valid_date": days, "lead": lead, "x1": x1, "x2": x2, "y": y}))
    return pd.concat(frames, ignore_index=True).sort_values(["valid_date", "lead"])


def write_small_routine(
    root: Path,
    *,
    name: str = "tiny",
    routine_yaml: str = ROUTINE_YAML,
    experiments: dict[str, str] = EXPERIMENTS,
    seed: int = 1,
) -> Path:
    """Write the tiny routine under ``root/<name>`` and return that folder (another
    routine definition, experiment specs or data seed may be given)."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routine.yaml").write_text(routine_yaml)
    small_data(seed).to_csv(folder / "data.csv", index=False, date_format="%Y-%m-%d")
    for experiment, text in experiments.items():
        (folder / f"{experiment}.yaml").write_text(textwrap.dedent(text))
    return folder
