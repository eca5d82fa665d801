"""Small synthetic paired cases for the scoring tests (fixed seeds, fast)."""

from __future__ import annotations

import numpy as np
import pandas as pd

SEASONS = np.array(["DJF", "MAM", "JJA", "SON"])


def make_pairs(
    n_cycles: int = 60,
    leads: int = 3,
    improvement: float = 0.2,
    seed: int = 0,
    binary: bool = False,
) -> pd.DataFrame:
    """One case per cycle × lead; the candidate's errors are ``1 − improvement``
    times the reference's plus a little independent noise."""
    rng = np.random.default_rng(seed)
    cycles = np.repeat(np.arange(n_cycles), leads)
    lead = np.tile(np.arange(1, leads + 1), n_cycles)
    n = cycles.size
    if binary:
        truth = rng.uniform(0.05, 0.95, n)
        observation = (rng.uniform(size=n) < truth).astype(float)
        reference = np.clip(truth + rng.normal(0, 0.25, n), 0.01, 0.99)
        candidate = np.clip(truth + rng.normal(0, 0.25 * (1 - improvement), n), 0.01, 0.99)
    else:
        observation = rng.normal(15.0, 5.0, n)
        error_r = rng.normal(0.5, 1.5, n) * np.sqrt(lead)
        error_c = (1.0 - improvement) * error_r + rng.normal(0.0, 0.3, n)
        reference, candidate = observation + error_r, observation + error_c
    return pd.DataFrame(
        {
            "cycle": cycles,
            "case": [f"{c}/{lead_}" for c, lead_ in zip(cycles, lead, strict=True)],
            "candidate": candidate,
            "reference": reference,
            "observation": observation,
            "lead": lead,
            "season": SEASONS[(cycles // 10) % 4],
        }
    )
