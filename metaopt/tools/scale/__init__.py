"""``metaopt scale``: how much faster ``metaopt train`` runs on more processes, and that it agrees.

For each repeat and each process count N it runs the family's training as a fresh subprocess,
exactly as a user would: ``python -m metaopt train FAMILY ...`` for N = 1 and
``python -m torch.distributed.run --standalone --nproc-per-node N -m metaopt train FAMILY ...``
otherwise, with ``OMP_NUM_THREADS`` and ``--threads`` set to the same thread count per process.
Within a repeat the process counts take turns (ascending on even repeats, descending on odd
ones), so that a slow stretch of the machine falls on all of them alike rather than on the last.

Three times are measured per run:

* **per-iteration seconds**: the median, over the run's meta-iterations, of the differences of
  the cumulative ``seconds`` column of ``metrics.jsonl`` (the first iteration counted from the
  loop's start). This is the headline: it is the part that sharding divides, and the median
  leaves out what happens once or now and then (the first iteration's warm-up, the periodic
  evaluation, which runs between two iterations), so it does not depend on how long the run is
  or how often it evaluates;
* **training seconds**: the last row's ``seconds``, the whole meta-training loop, periodic
  evaluations included;
* **wall-clock seconds** of the whole subprocess: interpreter and torch start-up, process-group
  rendezvous, training, the final evaluation and the plots. This is what a
  user waits for, and for a short run it is dominated by costs that more processes do not share.

Each is reported as the median over repeats, per process count, with the speed-up
``median at the smallest N / median at N`` (above 1: faster).

Agreement. A sharded run must compute what one process computes (docs/distributed.md): the same
meta-gradients up to the order of floating-point sums. Final meta-parameters are compared per
tensor, ``‖θ − θ_ref‖ ≤ tolerance · ‖θ_ref‖`` (default 1e-5), in two ways that fail the command:

* **across process counts**, on short runs of ``--check-iterations`` (default 5) iterations, one
  per count, launched before the timed runs (so a broken setting fails in seconds, not minutes);
  when the timed runs are no longer than that, their own final parameters are compared instead;
* **across repeats** of one process count: the timed runs must be deterministic, or their times
  would not be of the same computation.

The timed runs' final parameters are also compared across process counts, but only reported:
over hundreds of iterations the last-bit differences do not stay small when the family samples
data with the model (reinforcement learning samples actions from the policy). Sooner or later one
sampled action falls the other way, and from then on the runs see different trajectories. The
default configuration of ``mdp`` agrees within 1e-5 in every logged number up to iteration 79 at
1 and 2 processes, and its final parameters differ by 0.22 (relative) after 500. The report (and
``agreement`` in the JSON) gives, over the whole timed runs, the largest relative difference of
any number they logged in ``metrics.jsonl`` (which, and at which iteration) and the iteration at
which the logged numbers first differ by more than the tolerance.

The package: `options` (`ScaleOptions`, records, failures), `measurement` (medians, speed-ups,
parameter differences), `report` (the table), `run` (the subprocesses) and `command`.
"""

from typing import TYPE_CHECKING

from metaopt._lazy import lazy_exports

if TYPE_CHECKING:
    from metaopt.tools.scale.command import add_scale_arguments, run_scale_command
    from metaopt.tools.scale.measurement import (
        check_same_parameters,
        first_divergence,
        largest_difference,
        largest_metric_difference,
        median_iteration_seconds,
        metric_differences,
        relative_differences,
        summarize_runs,
    )
    from metaopt.tools.scale.options import (
        DEFAULT_CHECK_ITERATIONS,
        DEFAULT_TOLERANCE,
        ParameterAgreement,
        ParameterMismatch,
        RunRecord,
        ScaleFailure,
        ScaleOptions,
        parse_processes,
    )
    from metaopt.tools.scale.report import render_table
    from metaopt.tools.scale.run import launch_command, run_scale, train_flags

# Imported on first use (metaopt._lazy): the command line adds this tool's flags without torch.
__getattr__ = lazy_exports(
    __name__,
    {
        "add_scale_arguments": "metaopt.tools.scale.command",
        "run_scale_command": "metaopt.tools.scale.command",
        "check_same_parameters": "metaopt.tools.scale.measurement",
        "first_divergence": "metaopt.tools.scale.measurement",
        "largest_difference": "metaopt.tools.scale.measurement",
        "largest_metric_difference": "metaopt.tools.scale.measurement",
        "metric_differences": "metaopt.tools.scale.measurement",
        "median_iteration_seconds": "metaopt.tools.scale.measurement",
        "relative_differences": "metaopt.tools.scale.measurement",
        "summarize_runs": "metaopt.tools.scale.measurement",
        "DEFAULT_CHECK_ITERATIONS": "metaopt.tools.scale.options",
        "DEFAULT_TOLERANCE": "metaopt.tools.scale.options",
        "ParameterAgreement": "metaopt.tools.scale.options",
        "ParameterMismatch": "metaopt.tools.scale.options",
        "RunRecord": "metaopt.tools.scale.options",
        "ScaleFailure": "metaopt.tools.scale.options",
        "ScaleOptions": "metaopt.tools.scale.options",
        "parse_processes": "metaopt.tools.scale.options",
        "render_table": "metaopt.tools.scale.report",
        "launch_command": "metaopt.tools.scale.run",
        "run_scale": "metaopt.tools.scale.run",
        "train_flags": "metaopt.tools.scale.run",
    },
)

__all__ = [
    "DEFAULT_CHECK_ITERATIONS",
    "DEFAULT_TOLERANCE",
    "ParameterAgreement",
    "ParameterMismatch",
    "RunRecord",
    "ScaleFailure",
    "ScaleOptions",
    "add_scale_arguments",
    "check_same_parameters",
    "first_divergence",
    "largest_difference",
    "largest_metric_difference",
    "launch_command",
    "median_iteration_seconds",
    "metric_differences",
    "parse_processes",
    "relative_differences",
    "render_table",
    "run_scale",
    "run_scale_command",
    "summarize_runs",
    "train_flags",
]
