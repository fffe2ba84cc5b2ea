"""The coarse-to-fine schedule as data: which objective each stage scores, its share of the budget, its solver.

A stage's ``options`` go to the objective (``cad.target.compare_model(method="mesh", **options)`` in the web
layer); the last stage is the real objective, gets whatever budget is left and starts from the coarse result it
scores best.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    options: object  # passed to objective(values, options); a dict of compare_model options in practice
    share: float  # of the whole budget (ignored for the last stage)
    solver: str = "pattern"  # a name in cad.fit.solvers.SOLVERS
    solver_options: dict = field(default_factory=dict)
    grid: str = "fine"  # "step": snap to the schema steps; "fine": to a hundredth of them (cad.fit.problem)
    refit_ints: bool = True  # False: an int's neighbours are tried as plain moves only (no refit of the floats)
    every_int_value: bool = False  # also an int's values beyond its neighbours, plain (cad.fit.integers.FEW_VALUES)
    # Solver options that override those of ``solver_options`` where the stage before ran out of its share (its
    # answer may be far off: a tight budget): a stage that trusts a converged predecessor re-explores instead.
    options_after_cut: dict | None = None


# A coarse stage's least squares stops once an iteration gains less than this share of the cost it started from:
# on held-out random parts the crawl below that (a hole's size in a volume profile, 15 iterations for a third of
# the cost) was 7-14 % of the evaluations and the next stage undid it. One such iteration is enough to stop it (a
# second, with its fresh Jacobian, confirmed the stall and cost n + 1 evaluations more).
COARSE = {"stall_share_of_start": 1e-3, "stall_iterations": 1}

# Least squares from coarse to fine: cumulative volume profiles first (they pull a part toward its place from
# anywhere: a length 40 mm short, a lid lifted off), then occupancy fields less and less blurred, then the pattern
# search on the ray IoU, where thin walls are finally resolved (it was the stage that ran out of budget).
DEFAULT_SCHEDULE = (
    Stage({"field": {"resolution": 64, "cumulative": True}}, 0.2, "least_squares", COARSE, grid="step"),
    Stage({"field": {"resolution": 48, "blur": 1.5}}, 0.1, "least_squares", COARSE, grid="step"),
    Stage({"field": {"resolution": 64, "blur": 0.75}}, 0.1, "least_squares", COARSE, grid="step"),
    # The least-blurred field converges fully, off the steps: its answer is already within a hair of the real one
    # (zero residuals at the hidden state), which the pattern search then only has to confirm and refine. (Stopping
    # it like the coarse stages saved the 10-parameter bracket 10-20 % of its evaluations on seeds 0 and 2, but on
    # held-out seed 1 it left the enclosure at 0.919 instead of 0.973 and the rover at 0.995 instead of 0.9995.)
    Stage({"field": {"resolution": 96, "blur": 0.5}}, 0.2, "least_squares", grid="fine"),
    # So the last stage starts with fine steps (1/2048 of each range; 1/128 after step-grid coarse stages cost it
    # 10 evaluations per float), unless that stage ran out of its share (a budget of 150 for the rover: from fine
    # steps the head's pan and tilt, 1-3 degrees off, were not reached in time; from 1/128 they were). The coarse
    # stages also tried every int's neighbours with the floats refitted (confirmed by this stage's objective); here
    # a neighbour is a plain move only (the refits cost 113 of 536 evaluations on an 8-parameter part). Least
    # squares moved coupled parameters together, so no ridge moves either: on 6 random parts (seeds 0 and 2) and
    # the bracket, pillow block and enclosure they cost 4-40 evaluations each here and never gained once. An int
    # with few values also tries the rest of them, plain, once its neighbours are done (cad.fit.integers).
    Stage({"resolution": 128, "rays": True}, 1.0, "pattern", {"initial_step": 1 / 2048, "pair_moves": False},
          refit_ints=False, every_int_value=True, options_after_cut={"initial_step": 1 / 128}),
)
# The same search on one objective that gives only a score (no residual fields).
SINGLE_STAGE = (Stage(None, 1.0, "pattern"),)
