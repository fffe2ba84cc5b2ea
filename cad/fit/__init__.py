"""Fitting a parametric model to a target: a scale-free problem, replaceable solvers, a coarse-to-fine schedule.

- ``problem``: parameters normalised to [0, 1] on grids relative to each one (its schema step, or a hundredth
  of it; through the start value), the counted and cached objective with a tiny pull toward the start.
- ``solvers``: Levenberg-Marquardt on residual fields, a coordinate/pattern search, scipy's Powell; one interface.
- ``integers``: neighbour moves of the ints with a short refit of the floats.
- ``workers``: parallel evaluations, ``fit(..., submit=, workers=)``: the solvers' batches of independent states
  at once, and the state a serial search would ask next started on an idle worker; the batches are fixed by the
  algorithm and a state counts only once asked, so the answer and the count are those of the serial fit.
- ``schedule``: the stages as data; ``fitting``: ``fit`` and ``FitResult`` (the revert pass, then the answer
  moved onto the step grid wherever that costs no IoU).

Pure Python at import (numpy and scipy load with the solver that needs them): the web process imports this.
"""
from cad.fit.fitting import MAX_EVALUATIONS_LIMIT, FitResult, fit
from cad.fit.schedule import DEFAULT_SCHEDULE, SINGLE_STAGE, Stage

__all__ = ["DEFAULT_SCHEDULE", "MAX_EVALUATIONS_LIMIT", "SINGLE_STAGE", "FitResult", "Stage", "fit"]
