"""LSTM forecaster: a recurrent encoder of the recent past and a direct multi-step head.

The encoder reads the last ``lookback`` of history (values divided by the training series'
robust maximum, with the covariates) averaged to hourly blocks. The head forecasts every step of
the horizon at once: from the encoder's state, that step's covariates and lead time it weighs four
references for the step (same time yesterday and last week, mean and maximum of the same time
over the last week) and adds an offset. Training minimises the L1 error, so the forecast is a
median.

torch is imported inside the functions that need it, so importing this module does not load it.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from derim.errors import TwinError
from derim.twin.base import Forecaster
from derim.twin.features import Covariates
from derim.twin.timeseries import MAX_HORIZON, horizon_steps, steps_per_day

if TYPE_CHECKING:
    import torch

BATCH_SIZE = 256
LEARNING_RATE = 3e-3
"""Peak learning rate, annealed to zero along a cosine over ``epochs``, or over as many batches as
fit in ``max_train_seconds`` at the pace of the epochs so far when that is fewer."""
WEIGHT_DECAY = 1e-4
HEAD_WIDTH = 64
"""Units of the head's hidden layer."""
VALIDATION_SHARE = 0.1
MIN_VALIDATION_DAYS = 7
"""The last tenth of the training history (a week at least) is held out to measure the error."""
WEEK_DAYS = 7
"""Days of history behind the weekly references; gaps are filled from up to this many days back."""
REFERENCES = 4
"""Per-step references the head weighs: yesterday, last week, weekly mean and maximum."""
EVAL_CHUNK = 2048
"""Origins per forward pass when scoring the validation set."""
ALWAYS_COLUMNS = ("hour_sin", "hour_cos", "cos_zenith", "clearsky")
"""Covariates always used (those present); day-of-year terms are never used, since a year of
history shows each season once, and day-of-week terms only for a series with a weekly cycle."""
WEEK_COLUMNS = ("week_sin", "week_cos")


@dataclass(frozen=True)
class _Layout:
    """Sizes that fix the network's shape and how windows are cut from a series."""

    per_day: int
    block: int
    """Steps averaged into one encoder input (one hour, or one step when the step is longer)."""
    blocks: int
    """Encoder inputs in the lookback window."""
    steps: int
    """Forecast steps the network was trained for."""
    columns: tuple[str, ...]
    """Covariate columns the network reads."""
    hidden: int

    @property
    def lookback(self) -> int:
        """Steps of history the encoder reads."""
        return self.blocks * self.block

    @property
    def context(self) -> int:
        """Steps of history needed before an origin."""
        return max(self.lookback, (WEEK_DAYS + 1) * self.per_day)

    def reference_offsets(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Offsets from the origin to the same time in the latest day and week of history."""
        ahead = np.arange(1, steps + 1)
        day = ahead - 1 - np.ceil(ahead / self.per_day).astype(int) * self.per_day
        week = WEEK_DAYS * self.per_day
        return day, ahead - 1 - np.ceil(ahead / week).astype(int) * week

    def leads(self, steps: int) -> np.ndarray:
        """Lead time of each step as a share of the longest horizon served (168 h)."""
        leads: np.ndarray = np.arange(1, steps + 1) / (MAX_HORIZON / pd.Timedelta(days=1))
        return leads / self.per_day


class LstmForecaster(Forecaster):
    """LSTM encoder over the last ``lookback`` plus covariates; direct multi-step median head."""

    name: ClassVar[str] = "lstm"
    description: ClassVar[str] = (
        "LSTM over the recent past and covariates, direct multi-step median forecast"
    )
    refit_after_calibration: ClassVar[bool] = False

    def __init__(
        self,
        horizon: pd.Timedelta = pd.Timedelta(hours=24),
        epochs: int = 50,
        seed: int = 0,
        max_train_seconds: float = 45.0,
        hidden: int = 48,
        lookback: pd.Timedelta = pd.Timedelta(hours=48),
    ) -> None:
        """``horizon`` trained for (24-168 h); ``max_train_seconds`` caps the training loop (s)."""
        super().__init__()
        if not pd.Timedelta(hours=24) <= horizon <= MAX_HORIZON:
            raise TwinError(f"lstm horizon {horizon} must be between 24 hours and {MAX_HORIZON}")
        if not pd.Timedelta(hours=1) <= lookback <= pd.Timedelta(days=self.context_days):
            raise TwinError(f"lstm lookback {lookback} must be between 1 hour and 15 days")
        if epochs < 1 or hidden < 1 or max_train_seconds <= 0:
            raise TwinError("lstm epochs, hidden size and training time must be positive")
        self.horizon = horizon
        self.epochs = epochs
        self.seed = seed
        self.max_train_seconds = max_train_seconds
        self.hidden = hidden
        self.lookback = lookback
        self.scale = 1.0
        """Robust maximum of the training series; the network sees values divided by it."""
        self.epochs_run = 0
        """Epochs started (the last may be partial); fewer than ``epochs`` when time ran out."""
        self.validation_mae = math.nan
        """Mean absolute error (series units) of the held-out tail of the training history."""
        self._layout: _Layout | None = None
        self._weights: bytes | None = None
        self._network: torch.nn.ModuleDict | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled state: the weights as bytes, without the live torch module."""
        state = self.__dict__.copy()
        state["_network"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`__getstate__`; the module is rebuilt on first use."""
        self.__dict__.update(state)

    def _fit(self, history: pd.Series) -> None:
        import torch

        covariates = self.fitted_covariates()
        freq = covariates.freq
        per_day = steps_per_day(freq)
        values = history.to_numpy(dtype=float)
        finite = np.abs(values[np.isfinite(values)])
        top = float(np.quantile(finite, 0.99)) if finite.size else 0.0
        self.scale = top if top > 0 else 1.0
        values = values / self.scale
        filled = _fill_gaps(values, per_day)
        block = max(1, int(pd.Timedelta(hours=1) // freq))
        layout = _Layout(
            per_day=per_day,
            block=block,
            blocks=max(1, int(self.lookback // (freq * block))),
            steps=horizon_steps(self.horizon, freq),
            columns=_columns(covariates, filled, per_day),
            hidden=self.hidden,
        )
        frame = covariates.frame(pd.DatetimeIndex(history.index))[list(layout.columns)]
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        windows = _Windows(layout, values, filled, frame.to_numpy(dtype=float), device)
        network = _train(self, layout, windows, device)
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in network.state_dict().items()}, buffer)
        self._layout = layout
        self._weights = buffer.getvalue()
        self._network = None

    def _point(self, history: pd.Series, index: pd.DatetimeIndex) -> np.ndarray:
        import torch

        layout = self._fitted_layout()
        if len(index) > layout.steps:
            hours = self.freq / pd.Timedelta(hours=1)
            raise TwinError(
                f"lstm forecaster was trained for a {layout.steps * hours:g} h horizon;"
                f" {len(index) * hours:g} h was requested"
            )
        steps = layout.steps  # always the trained horizon, so a shorter one is its exact start
        window = layout.context
        values = history.to_numpy(dtype=float)[-window:] / self.scale
        if values.size < window:
            values = np.concatenate([np.full(window - values.size, np.nan), values])
        filled = _fill_gaps(values, layout.per_day)
        end = pd.Timestamp(history.index[-1])
        covariate_index = pd.date_range(
            end - (layout.lookback - 1) * self.freq,
            periods=layout.lookback + steps,
            freq=self.freq,
        )
        covariates = self.fitted_covariates().frame(covariate_index)[list(layout.columns)]
        frame = covariates.to_numpy(dtype=float)
        past_steps = np.column_stack([filled[-layout.lookback :], frame[: layout.lookback]])
        past = past_steps.reshape(layout.blocks, layout.block, -1).mean(axis=1)
        day, week = layout.reference_offsets(steps)
        statistics = _weekly_statistics(filled, layout.per_day)
        future = np.column_stack(
            [
                frame[layout.lookback :],
                layout.leads(steps),
                filled[window + day],
                filled[window + week],
                statistics[window + day],
            ]
        )
        network = self._cpu_network()
        with torch.inference_mode():
            output = _forward(
                network,
                torch.as_tensor(past[None], dtype=torch.float32),
                torch.as_tensor(future[None], dtype=torch.float32),
            )
        point: np.ndarray = output[0, : len(index)].numpy().astype(float) * self.scale
        return point

    def _fitted_layout(self) -> _Layout:
        if self._layout is None or self._weights is None:
            raise TwinError(f"forecaster {self.name} has not been fitted")
        return self._layout

    def _cpu_network(self) -> torch.nn.ModuleDict:
        """The trained network on the CPU, rebuilt from the stored weights on first use."""
        import torch

        if self._network is None:
            layout = self._fitted_layout()
            assert self._weights is not None
            network = _network(layout)
            state = torch.load(io.BytesIO(self._weights), map_location="cpu", weights_only=True)
            network.load_state_dict(state)
            network.eval()
            self._network = network
        return self._network


def _columns(covariates: Covariates, filled: np.ndarray, per_day: int) -> tuple[str, ...]:
    """Covariates to use: day-of-week terms only when same time last week is a better guess than
    same time yesterday over ``filled``."""
    names = [name for name in covariates.columns if name in ALWAYS_COLUMNS]
    week = WEEK_DAYS * per_day
    daily = float(np.mean(np.abs(filled[week:] - filled[week - per_day : -per_day])))
    weekly = float(np.mean(np.abs(filled[week:] - filled[:-week])))
    return (*names, *WEEK_COLUMNS) if weekly < daily else tuple(names)


def _fill_gaps(values: np.ndarray, per_day: int) -> np.ndarray:
    """``values`` with NaNs taken from the same time of day up to a week earlier, else 0."""
    filled = values.copy()
    for days in range(1, WEEK_DAYS + 1):
        missing = np.flatnonzero(~np.isfinite(filled))
        source = missing - days * per_day
        usable = source >= 0
        filled[missing[usable]] = values[source[usable]]
    finite: np.ndarray = np.nan_to_num(filled, nan=0.0, posinf=0.0, neginf=0.0)
    return finite


def _weekly_statistics(filled: np.ndarray, per_day: int) -> np.ndarray:
    """Mean and maximum of the same time of day over the week ending at each step, (n, 2)."""
    count = len(filled)
    lagged = np.full((WEEK_DAYS, count), np.nan)
    for days in range(WEEK_DAYS):
        lagged[days, days * per_day :] = filled[: count - days * per_day]
    statistics: np.ndarray = np.column_stack(
        [np.nanmean(lagged, axis=0), np.nanmax(lagged, axis=0)]
    )
    return statistics


def _network(layout: _Layout) -> torch.nn.ModuleDict:
    """Untrained layers: the LSTM encoder and the per-step head."""
    from torch import nn

    features = len(layout.columns)
    return nn.ModuleDict(
        {
            "encoder": nn.LSTM(1 + features, layout.hidden, batch_first=True),
            "state": nn.Linear(layout.hidden, HEAD_WIDTH),
            "step": nn.Linear(features + 1 + REFERENCES, HEAD_WIDTH),
            "out": nn.Linear(HEAD_WIDTH, 1 + REFERENCES),
        }
    )


def _forward(
    network: torch.nn.ModuleDict, past: torch.Tensor, future: torch.Tensor
) -> torch.Tensor:
    """Scaled forecasts (batch, steps) from past blocks (batch, blocks, 1 + features) and step
    inputs (batch, steps, features + 1 + references), the references last."""
    import torch

    _, (state, _) = network["encoder"](past)
    summary: torch.Tensor = network["state"](state[-1])
    hidden = torch.relu(summary[:, None, :] + network["step"](future))
    weights: torch.Tensor = network["out"](hidden)
    references = future[..., -REFERENCES:]
    return weights[..., 0] + (weights[..., 1:] * references).sum(dim=-1)


def _train(
    model: LstmForecaster, layout: _Layout, windows: _Windows, device: torch.device
) -> torch.nn.ModuleDict:
    """The network trained on ``windows``; sets ``epochs_run`` and ``validation_mae``."""
    import torch

    started = time.monotonic()
    torch.manual_seed(model.seed)
    generator = torch.Generator().manual_seed(model.seed)
    count = len(windows.values)
    origins = np.arange(layout.context, count - layout.steps + 1)
    validation_steps = max(MIN_VALIDATION_DAYS * layout.per_day, int(VALIDATION_SHARE * count))
    split = count - layout.steps - validation_steps
    train_origins = torch.as_tensor(origins[origins + layout.steps <= split])
    validation_origins = torch.as_tensor(origins[origins >= split][:: layout.block])
    if train_origins.numel() == 0 or validation_origins.numel() == 0:
        steps = layout.context + 2 * layout.steps + validation_steps
        days = steps / layout.per_day + model.calibration_days
        raise TwinError(f"lstm forecaster needs over {days:g} days of history for its horizon")
    network = _network(layout).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    batches = math.ceil(train_origins.numel() / BATCH_SIZE) * model.epochs
    planned = batches
    done = 0
    model.epochs_run = 0
    network.train()
    while done < planned:
        order = train_origins[torch.randperm(train_origins.numel(), generator=generator)]
        for batch in torch.split(order, BATCH_SIZE):
            elapsed = time.monotonic() - started
            if model.epochs_run:
                left = (model.max_train_seconds - elapsed) * done / elapsed
                planned = min(batches, done + math.floor(left))
            if done >= planned or elapsed >= model.max_train_seconds:
                planned = done
                break
            for group in optimiser.param_groups:
                group["lr"] = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * done / planned))
            loss = windows.loss(network, batch)
            optimiser.zero_grad()
            torch.autograd.backward(loss)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimiser.step()
            done += 1
        model.epochs_run += 1
    network.eval()
    with torch.no_grad():
        total = sum(
            float(windows.loss(network, chunk)) * chunk.numel()
            for chunk in torch.split(validation_origins, EVAL_CHUNK)
        )
    model.validation_mae = total / validation_origins.numel() * model.scale
    return network


class _Windows:
    """Training windows cut on the fly from whole-series tensors, for a batch of origins."""

    def __init__(
        self,
        layout: _Layout,
        values: np.ndarray,
        filled: np.ndarray,
        frame: np.ndarray,
        device: torch.device,
    ) -> None:
        """Windows of scaled ``values`` (NaN where missing, gaps filled in ``filled``) and
        covariates ``frame``."""
        import torch

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array, dtype=torch.float32, device=device)

        inputs = np.column_stack([filled, frame])
        totals = np.cumsum(np.vstack([np.zeros((1, inputs.shape[1])), inputs]), axis=0)
        blocks = np.zeros_like(inputs)
        blocks[layout.block - 1 :] = (totals[layout.block :] - totals[: -layout.block]) / (
            layout.block
        )
        self.blocks = tensor(blocks)
        self.frame = tensor(frame)
        self.filled = tensor(filled)
        self.statistics = tensor(_weekly_statistics(filled, layout.per_day))
        self.values = tensor(values)
        self.leads = tensor(layout.leads(layout.steps))[:, None]
        self.past_offsets = torch.as_tensor(
            -1 - layout.block * np.arange(layout.blocks - 1, -1, -1), device=device
        )
        self.ahead = torch.arange(layout.steps, device=device)
        day, week = layout.reference_offsets(layout.steps)
        self.day = torch.as_tensor(day, device=device)
        self.week = torch.as_tensor(week, device=device)

    def loss(self, network: torch.nn.ModuleDict, origins: torch.Tensor) -> torch.Tensor:
        """Mean absolute error over the finite targets of the windows starting at ``origins``."""
        import torch

        origins = origins.to(self.ahead.device)[:, None]
        past = self.blocks[origins + self.past_offsets]
        future = torch.cat(
            [
                self.frame[origins + self.ahead],
                self.leads.expand(len(origins), -1, -1),
                self.filled[origins + self.day][..., None],
                self.filled[origins + self.week][..., None],
                self.statistics[origins + self.day],
            ],
            dim=-1,
        )
        target = self.values[origins + self.ahead]
        known = torch.isfinite(target)
        error = (_forward(network, past, future) - torch.nan_to_num(target)).abs()
        return (error * known).sum() / known.sum().clamp(min=1)
