"""The pure scoring core: metrics, paired significance and scorecards.

No database, web or MLflow imports here: numpy, scipy and pandas only.
See docs/statistics.md for the statistics and the choices made.
"""

from numex.scoring.metrics import METRICS, Metric, get_metric, score, skill_score
from numex.scoring.scorecard import (
    DEFAULT_FLOOR,
    OVERALL,
    Cell,
    CycleSeries,
    Exclusions,
    Family,
    FamilyLevel,
    Scorecard,
    build_scorecard,
)
from numex.scoring.significance import (
    DEFAULT_LEVELS,
    DEFAULT_METHOD,
    METHODS,
    Interval,
    PairedTest,
    autocorrelation,
    familywise_level,
    paired_test,
    sidak_level,
    variance_inflation,
)

__all__ = [
    "DEFAULT_FLOOR",
    "DEFAULT_LEVELS",
    "DEFAULT_METHOD",
    "METHODS",
    "METRICS",
    "OVERALL",
    "Cell",
    "CycleSeries",
    "Exclusions",
    "Family",
    "FamilyLevel",
    "Interval",
    "Metric",
    "PairedTest",
    "Scorecard",
    "autocorrelation",
    "build_scorecard",
    "familywise_level",
    "get_metric",
    "paired_test",
    "score",
    "sidak_level",
    "skill_score",
    "variance_inflation",
]
