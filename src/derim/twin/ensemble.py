"""A forecast combination: the mean of the members' medians, with its own calibrated band."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from derim.twin.base import Forecaster
from derim.twin.baselines import ClearSkyPersistence, SeasonalMovingAverage
from derim.twin.gbm import GradientBoosting


class Ensemble(Forecaster):
    """Mean of LightGBM and clear-sky persistence (PV) or the 7-day mean (no site).

    Averaging two forecasts whose errors are not fully correlated lowers the error of both; the
    members are fitted on the same history and the band is calibrated on the combination.
    """

    name: ClassVar[str] = "ensemble"
    description: ClassVar[str] = "mean of gbm and clear-sky persistence (or the 7-day mean)"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.members: list[Forecaster] = []
        self.seed = seed

    def _fit(self, history: pd.Series) -> None:
        covariates = self.fitted_covariates()
        reference: Forecaster = (
            ClearSkyPersistence() if covariates.site is not None else SeasonalMovingAverage()
        )
        self.members = [GradientBoosting(seed=self.seed), reference]
        for member in self.members:
            member.covariates = covariates
            member._fit(history)

    def _point(self, history: pd.Series, index: pd.DatetimeIndex) -> np.ndarray:
        points = [member._point(history, index) for member in self.members]
        mean: np.ndarray = np.mean(np.vstack(points), axis=0)
        return mean
