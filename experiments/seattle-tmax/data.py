"""Cases for the seattle-tmax routine, built from real observations.

The observations are Seattle's daily weather 2012–2015 as shipped inside the
``vega_datasets`` package (read from its local copy: nothing is downloaded).

A case is a valid date ``d`` and a lead time ``L`` of 1–3 days. Its forecast
is issued on ``d − L``, so every feature uses observations up to the issue
date only; the target is the maximum temperature observed on ``d``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LEADS = (1, 2, 3)
FEATURES = [
    "tmax_obs",  # maximum temperature on the issue date (°C)
    "tmax_lag1",  # ... one day before the issue date
    "tmax_lag2",  # ... two days before the issue date
    "tmax_mean7",  # mean maximum over the 7 days ending on the issue date
    "precip_obs",  # precipitation on the issue date (mm)
    "doy_sin",  # seasonal cycle of the valid date
    "doy_cos",
    "lead",  # lead time in days
]


def load_observations() -> pd.DataFrame:
    """Daily observations: ``date``, ``tmax`` (°C), ``precip`` (mm), one row per day."""
    from vega_datasets import local_data

    raw = local_data.seattle_weather()
    observations = pd.DataFrame(
        {
            "date": pd.to_datetime(raw["date"]),
            "tmax": raw["temp_max"].astype(float),
            "precip": raw["precipitation"].astype(float),
        }
    )
    return observations.sort_values("date").set_index("date").asfreq("D").reset_index()


def load_cases() -> pd.DataFrame:
    """One row per (valid_date, lead): the features known at issue time and the target.

    Cases whose features need observations before the record starts (the
    first days, for the lags and the 7-day mean) are left out.
    """
    observations = load_observations().set_index("date")
    known = pd.DataFrame(
        {
            "tmax_obs": observations["tmax"],
            "tmax_lag1": observations["tmax"].shift(1),
            "tmax_lag2": observations["tmax"].shift(2),
            "tmax_mean7": observations["tmax"].rolling(7, min_periods=7).mean(),
            "precip_obs": observations["precip"],
        }
    )
    frames = []
    for lead in LEADS:
        cases = known.copy()
        cases.index = cases.index + pd.Timedelta(days=lead)  # issued on date → valid lead days on
        cases.index.name = "valid_date"
        cases = cases.reset_index()
        cases["issue_date"] = cases["valid_date"] - pd.Timedelta(days=lead)
        cases["lead"] = lead
        frames.append(cases)
    cases = pd.concat(frames, ignore_index=True)
    day_of_year = cases["valid_date"].dt.day_of_year
    cases["doy_sin"] = np.sin(2 * np.pi * day_of_year / 365.25)
    cases["doy_cos"] = np.cos(2 * np.pi * day_of_year / 365.25)
    cases["tmax"] = cases["valid_date"].map(observations["tmax"])
    cases = cases.dropna(subset=[*FEATURES, "tmax"])
    columns = ["valid_date", "lead", "issue_date", "tmax", *[f for f in FEATURES if f != "lead"]]
    return cases[columns].sort_values(["valid_date", "lead"]).reset_index(drop=True)
