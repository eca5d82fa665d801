"""Benchmark: a full scorecard on 1,000,000 paired cases.

    .venv/bin/python bench/bench_scorecard.py            # print the figures
    .venv/bin/python bench/bench_scorecard.py --write    # also update docs/benchmarks.md

Data (fixed seed): 730 daily cycles (two years); 1,000,000 cases, about 1,370
per cycle; two segment columns, ``lead`` (1–20 days) and ``season`` (DJF, MAM,
JJA, SON from the cycle's date), i.e. 24 segment values and 25 grid columns
with overall; 4 metrics (rmse, mae, bias, sde) → 100 cells, every one with
the AR(2) significance test. Errors carry a cycle-level AR(1) component (so
the per-cycle differences are autocorrelated, as in real verification) and
grow with lead; 0.1 % of the forecasts are missing (excluded and counted).

Three implementations of the same computation are timed in the same run:

* numex — :func:`numex.scoring.build_scorecard`;
* pandas — a straightforward group-by version (per-case losses, ``groupby``
  means per cycle × segment value, then the same paired test per cell); its
  results are checked against numex's;
* floor — one bare NumPy pass: a single ``np.bincount`` of one metric's loss
  difference per cycle on pre-made integer cycle codes. No real scorecard can
  be faster than this.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from numex.scoring import build_scorecard, paired_test  # noqa: E402

N_CASES = 1_000_000
N_CYCLES = 730
N_LEADS = 20
METRICS = ["rmse", "mae", "bias", "sde"]
SEGMENTS = ["lead", "season"]
METHOD = "ar2"
SEED = 20140101
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
COMMAND = ".venv/bin/python bench/bench_scorecard.py"


def make_pairs(seed: int = SEED) -> pd.DataFrame:
    """1,000,000 synthetic paired cases (see the module docstring)."""
    rng = np.random.default_rng(seed)
    index = np.arange(N_CASES)
    cycle = index * N_CYCLES // N_CASES
    lead = index % N_LEADS + 1
    dates = pd.Timestamp("2014-01-01") + pd.to_timedelta(np.arange(N_CYCLES), "D")
    season_of_month = np.array(["DJF"] * 2 + ["MAM"] * 3 + ["JJA"] * 3 + ["SON"] * 3 + ["DJF"])
    season = season_of_month[dates.month.to_numpy() - 1][cycle]

    # Cycle-level weather regime: AR(1) so that scores are correlated day to day.
    regime = np.empty(N_CYCLES)
    regime[0] = 0.0
    shocks = rng.normal(0.0, 0.4, N_CYCLES)
    for t in range(1, N_CYCLES):
        regime[t] = 0.7 * regime[t - 1] + shocks[t]
    spread = 1.0 + 0.08 * lead
    observation = rng.normal(15.0, 6.0, N_CASES)
    reference = observation + 0.4 + regime[cycle] + rng.normal(0.0, 1.0, N_CASES) * spread
    candidate = observation + 0.2 + 0.9 * regime[cycle] + rng.normal(0.0, 0.95, N_CASES) * spread
    candidate[rng.uniform(size=N_CASES) < 0.001] = np.nan
    return pd.DataFrame(
        {
            "cycle": dates[cycle],
            "case": index,
            "candidate": candidate,
            "reference": reference,
            "observation": observation,
            "lead": lead,
            "season": season,
        }
    )


def pandas_scorecard(pairs: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float]]:
    """The same grid the straightforward pandas way: ``(metric, column) → (d̄, p)``."""
    valid = pairs.dropna(subset=["candidate", "reference", "observation"])
    frame = valid[["cycle", *SEGMENTS]].copy()
    frame["ec"] = valid["candidate"] - valid["observation"]
    frame["er"] = valid["reference"] - valid["observation"]
    frame["aec"], frame["aer"] = frame["ec"].abs(), frame["er"].abs()
    frame["sec"], frame["ser"] = frame["ec"] ** 2, frame["er"] ** 2
    frame["all"] = "overall"
    results = {}
    for column in ["all", *SEGMENTS]:
        # sde: errors centred on the cell's own mean error
        for side in ("c", "r"):
            centred = frame[f"e{side}"] - frame.groupby(column)[f"e{side}"].transform("mean")
            frame[f"cc{side}"] = centred**2
        quantities = ["ec", "er", "aec", "aer", "sec", "ser", "ccc", "ccr"]
        per_cycle = frame.groupby([column, "cycle"], sort=True)[quantities].mean()
        for value, cycles in per_cycle.groupby(level=0):
            name = "overall" if column == "all" else f"{column}={value}"
            differences = {
                "rmse": cycles["sec"] - cycles["ser"],
                "mae": cycles["aec"] - cycles["aer"],
                "bias": cycles["ec"].abs() - cycles["er"].abs(),
                "sde": cycles["ccc"] - cycles["ccr"],
            }
            for metric in METRICS:
                test = paired_test(differences[metric].to_numpy(), METHOD)
                results[metric, name] = (test.mean, test.p_value)
    return results


def floor_pass(codes: np.ndarray, candidate: np.ndarray, reference: np.ndarray, obs: np.ndarray):
    """One bincount of the MAE loss difference per cycle: the practical floor."""
    difference = np.abs(candidate - obs) - np.abs(reference - obs)
    return np.bincount(codes, weights=difference, minlength=N_CYCLES)


def timed(function: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return times, result


def describe(times: list[float]) -> str:
    return f"best {min(times):.3f} s, median {statistics.median(times):.3f} s ({len(times)} runs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    start = time.perf_counter()
    pairs = make_pairs()
    print(f"data: {len(pairs):,} cases, {N_CYCLES} cycles, segments lead×{N_LEADS} + season×4,")
    print(
        f"      metrics {', '.join(METRICS)}, method {METHOD} ({time.perf_counter() - start:.1f} s)"
    )

    def numex_run():
        return build_scorecard(pairs, METRICS, SEGMENTS, method=METHOD)

    numex_times, card = timed(numex_run, args.repeats)
    pandas_times, by_pandas = timed(lambda: pandas_scorecard(pairs), max(1, args.repeats // 2))

    keep = pairs[["candidate", "reference", "observation"]].notna().all(axis=1).to_numpy()
    codes = pd.factorize(pairs["cycle"], sort=True)[0][keep]
    arrays = [pairs[c].to_numpy()[keep] for c in ("candidate", "reference", "observation")]
    floor_times, _ = timed(lambda: floor_pass(codes, *arrays), args.repeats * 4)

    # The two implementations must agree before their times mean anything.
    worst_mean = worst_p = 0.0
    for cell in card.cells:
        mean, p = by_pandas[cell.metric, cell.column]
        worst_mean = max(worst_mean, abs(mean - cell.mean_difference))
        worst_p = max(worst_p, abs(p - cell.p_value))
    assert worst_mean < 1e-9 and worst_p < 1e-9, (worst_mean, worst_p)

    numex_best, pandas_best, floor_best = min(numex_times), min(pandas_times), min(floor_times)
    lines = [
        f"- numex `build_scorecard`: {describe(numex_times)}",
        f"- pandas group-by: {describe(pandas_times)} — "
        f"{pandas_best / numex_best:.1f}× numex's time",
        f"- NumPy floor (one bincount of one loss difference): {describe(floor_times)} — "
        f"numex takes {numex_best / floor_best:.0f}× the floor",
        f"- grid: {len(card.cells)} cells ({len(card.metrics)} metrics × {len(card.columns)} "
        f"columns), {card.excluded.total:,} pairs excluded; numex and pandas agree "
        f"(largest difference in d̄ {worst_mean:.1e}, in p {worst_p:.1e})",
    ]
    machine = (
        f"{platform.python_implementation()} {platform.python_version()}, numpy {np.__version__}, "
        f"pandas {pd.__version__}, {os.cpu_count()} CPUs ({platform.machine()}), "
        f"load average {os.getloadavg()[0]:.1f} at the end of the run"
    )
    print("\n".join(lines))
    print(f"machine: {machine}")
    if args.write:
        write_section(lines, machine)
        print(f"wrote the Scorecard section of {DOCS}")


def write_section(lines: list[str], machine: str) -> None:
    """Replace (or add) the "## Scorecard" section of docs/benchmarks.md, nothing else."""
    section = "\n".join(
        [
            "## Scorecard",
            "",
            f"Command: `{COMMAND} --write` (plain `{COMMAND}` only prints).",
            "",
            "1,000,000 paired cases, 730 daily cycles, segments `lead` (1–20) and `season` "
            "(4) = 24 segment values + overall, metrics rmse, mae, bias, sde (100 cells), "
            "AR(2) significance in every cell, 0.1 % of forecasts missing. Seeded synthetic "
            "data; see the script's docstring. Goal: under 1 s.",
            "",
            *lines,
            f"- machine: {machine}",
            "",
        ]
    )
    text = DOCS.read_text(encoding="utf-8") if DOCS.exists() else "# Benchmarks\n\n"
    start = text.find("## Scorecard\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
