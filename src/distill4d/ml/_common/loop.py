"""The one training stop rule of the models: at most ``max_steps`` optimiser steps, at most
``patience`` evaluations without a relative improvement, and a wall-time budget.

The trainer owns its loop (what a step and an evaluation are, when it evaluates, which state
it keeps); :class:`StopRule` only decides when to stop and which evaluation is the best, and
records that decision's state (``state_dict``) for a checkpoint to resume from. Torch-free.

Usage::

    rule = StopRule(max_steps=cfg.max_steps, patience=cfg.patience, max_minutes=cfg.max_minutes)
    while not rule.steps_done(step):
        ...one optimiser step; step += 1...
        if evaluate_now:
            if rule.record(step, held_out_loss):
                best_state = copy_of_the_weights()
            if rule.stopped or rule.out_of_time():
                break
    rule.reason  # "max_steps", "patience" or "max_minutes"
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ...errors import Distill4dError
from ..._validate import positive_float, positive_int

__all__ = ["StopRule", "check_training_options"]

class StopRule:
    """When to stop training, and which evaluation is the best so far.

    Parameters
    ----------
    max_steps : optimiser steps in all (:meth:`steps_done`).
    patience : stop once this many evaluations in a row brought no relative improvement of at
        least ``min_rel_improvement`` (None: never on patience).
    min_rel_improvement : an evaluation is a new best when ``value < best * (1 - this)``
        (0: any decrease).
    max_minutes : wall-time budget from :meth:`start` (or construction); None or 0: none.
    start_after_step : evaluations at steps up to this one (a warm-up) neither count as best
        nor towards patience.
    clock : seconds, monotonic (default :func:`time.perf_counter`).
    """

    def __init__(self, max_steps: int, *, patience: int | None = None, min_rel_improvement: float = 0.0,
                 max_minutes: float | None = None, start_after_step: int = 0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_steps = positive_int("max_steps", max_steps)
        self.patience = None if patience is None else positive_int("patience", patience)
        if not 0.0 <= float(min_rel_improvement) < 1.0:
            raise Distill4dError(f"min_rel_improvement must be in [0, 1), got {min_rel_improvement!r}")
        self.min_rel_improvement = float(min_rel_improvement)
        self.max_minutes = positive_float("max_minutes", max_minutes) if max_minutes else None
        self.start_after_step = positive_int("start_after_step", start_after_step, minimum=0)
        self._clock = clock
        self._t0 = clock()
        self.best = math.inf
        self.best_step = -1
        self.stale = 0
        self.reason: str | None = None

    # ------------------------------------------------------------------ decisions
    def start(self, t0: float | None = None) -> None:
        """(Re)start the wall-time budget now, or at the clock reading ``t0``."""
        self._t0 = self._clock() if t0 is None else t0

    @property
    def elapsed_s(self) -> float:
        """Seconds since :meth:`start`."""
        return self._clock() - self._t0

    def steps_done(self, step: int) -> bool:
        """True (reason ``"max_steps"``) once ``step`` optimiser steps reach ``max_steps``."""
        if step >= self.max_steps:
            self.reason = self.reason or "max_steps"
            return True
        return False

    def record(self, step: int, value: float) -> bool:
        """An evaluation (lower is better) at ``step``: True when it is the new best. Sets
        :attr:`stopped` (reason ``"patience"``) when patience runs out."""
        if step <= self.start_after_step:
            return False
        if value < self.best * (1 - self.min_rel_improvement):
            self.best, self.best_step, self.stale = value, step, 0
            return True
        self.stale += 1
        if self.patience is not None and self.stale >= self.patience:
            self.reason = "patience"
        return False

    def out_of_time(self) -> bool:
        """True (reason ``"max_minutes"``) once the wall-time budget is spent."""
        if self.max_minutes is not None and self._clock() - self._t0 > 60 * self.max_minutes:
            self.reason = self.reason or "max_minutes"
            return True
        return False

    @property
    def stopped(self) -> bool:
        """Whether a stop decision was taken (see :attr:`reason`)."""
        return self.reason is not None

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint records to resume the same decisions: the best evaluation and the
        patience count (JSON-serialisable). Not the stop reason nor the clock: a resumed run
        has its own wall-time budget from :meth:`start`."""
        return {"best": None if math.isinf(self.best) else self.best, "best_step": self.best_step,
                "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from :meth:`state_dict`."""
        self.best = math.inf if state.get("best") is None else float(state["best"])
        self.best_step = int(state.get("best_step", -1))
        self.stale = int(state.get("stale", 0))


def check_training_options(config: Any, *, positive_ints: tuple[str, ...] = ("max_steps", "eval_every", "patience",
                                                                           "batch_size"),
                           nonnegative_ints: tuple[str, ...] = ()) -> None:
    """Check the options every trainer's configuration shares, each with a one-line error:
    ``positive_ints`` >= 1, ``nonnegative_ints`` >= 0, ``lr`` in (0, 1] (or None), ``max_minutes``
    > 0 (or None) and ``seed`` an integer >= 0."""
    for name in positive_ints:
        positive_int(name, getattr(config, name))
    for name in nonnegative_ints:
        positive_int(name, getattr(config, name), minimum=0)
    if getattr(config, "lr", None) is not None:
        positive_float("lr", config.lr, maximum=1.0)
    if getattr(config, "max_minutes", None) is not None:
        positive_float("max_minutes", config.max_minutes)
    positive_int("seed", config.seed, minimum=0)
