r"""Second- versus first-order: ``metaopt compare`` and the functions behind it.

For one task family and one config, on the same meta-batch and the same initialisation, it
computes the meta-gradients of second-order MAML, first-order MAML, Meta-SGD and Reptile and
measures, against second-order MAML's:

* the cosine similarity and the norm ratio, over all of θ and per layer (parameters grouped by
  module: ``net.0.weight`` and ``net.0.bias`` form ``net.0``), for each number of inner steps
  (``--steps``, default 1, 2, 5, 10), at initialisation and at ``--checkpoints`` evenly spaced
  iterations of a second-order MAML run;
* the wall time of one meta-iteration (``meta_backward`` and the outer step; fastest and median
  of ``--repeats``, round-robin over the methods, after a warm-up) and the peak of the bytes
  autograd keeps saved for the backward pass (`SavedTensorMeter`);
* learning curves: a full ``metaopt train`` run per method from the same seed, with a held-out
  post-adaptation query loss (and the family's own periodic evaluation) every few iterations,
  against iterations and against training wall-clock seconds.

What is compared, exactly:

* Meta-SGD: the θ part of its meta-gradient against MAML's; the gradient of its learned rates
  has no MAML counterpart, so its norm is reported on its own. Its rates start at ``inner_lr``,
  where its θ-gradient equals MAML's (a consistency check).
* Reptile: its direction (1/B) Σᵢ (θ − θ̃ᵢ), in parameter units, not loss-gradient units: the
  cosine compares directions, the norm ratio is a different quantity.
* "maml, other batch": second-order MAML on an independent meta-batch of the same size, so that
  the agreement of the other methods can be read against the meta-batch sampling noise.

Every method gets the tasks of an identically seeded generator (``family.sample_tasks`` with a
fresh ``numpy.random.default_rng``), so tasks that carry state or sample with their own
generator start identical. A task whose losses sample data with the model it is handed (RL)
still sees different samples once two methods' parameters differ.

The core of the measurements is domain-free: only ``make_model``, ``sample_tasks``,
``periodic_eval`` and the [`Task`][metaopt.Task] losses are used.

The package, by concern: `options` (`CompareOptions`, the names results use), `gradients`
(meta-gradients and their agreement), `memory` (`SavedTensorMeter`), `timing`, `curves` (the
training runs), `run` (`compare_methods`, the whole comparison), `report` (Markdown), `outputs`
(files), `plots` and `command`.
"""

from typing import TYPE_CHECKING

from metaopt._lazy import lazy_exports

if TYPE_CHECKING:
    from metaopt.tools.compare.command import add_compare_arguments, run_compare_command
    from metaopt.tools.compare.curves import (
        checkpoint_iterations,
        family_curve_key,
        heldout_query_loss,
    )
    from metaopt.tools.compare.gradients import (
        GradientAgreement,
        MetaGradient,
        agreement,
        comparison_seeds,
        cosine,
        initial_state,
        layer_of,
        meta_gradient,
        method_config,
        summarize_batches,
    )
    from metaopt.tools.compare.memory import SavedTensorMeter
    from metaopt.tools.compare.options import (
        DEFAULT_STEPS,
        HELDOUT_KEY,
        OTHER_BATCH,
        REFERENCE,
        CompareOptions,
        parse_methods,
    )
    from metaopt.tools.compare.plots import plot_cosines, plot_curves
    from metaopt.tools.compare.report import interpret, render_report
    from metaopt.tools.compare.run import compare_methods
    from metaopt.tools.compare.timing import Timing, time_meta_iterations

# Imported on first use (metaopt._lazy): the command line adds this tool's flags without torch.
__getattr__ = lazy_exports(
    __name__,
    {
        "add_compare_arguments": "metaopt.tools.compare.command",
        "run_compare_command": "metaopt.tools.compare.command",
        "checkpoint_iterations": "metaopt.tools.compare.curves",
        "family_curve_key": "metaopt.tools.compare.curves",
        "heldout_query_loss": "metaopt.tools.compare.curves",
        "GradientAgreement": "metaopt.tools.compare.gradients",
        "MetaGradient": "metaopt.tools.compare.gradients",
        "agreement": "metaopt.tools.compare.gradients",
        "comparison_seeds": "metaopt.tools.compare.gradients",
        "cosine": "metaopt.tools.compare.gradients",
        "initial_state": "metaopt.tools.compare.gradients",
        "layer_of": "metaopt.tools.compare.gradients",
        "meta_gradient": "metaopt.tools.compare.gradients",
        "method_config": "metaopt.tools.compare.gradients",
        "summarize_batches": "metaopt.tools.compare.gradients",
        "SavedTensorMeter": "metaopt.tools.compare.memory",
        "DEFAULT_STEPS": "metaopt.tools.compare.options",
        "HELDOUT_KEY": "metaopt.tools.compare.options",
        "OTHER_BATCH": "metaopt.tools.compare.options",
        "REFERENCE": "metaopt.tools.compare.options",
        "CompareOptions": "metaopt.tools.compare.options",
        "parse_methods": "metaopt.tools.compare.options",
        "plot_cosines": "metaopt.tools.compare.plots",
        "plot_curves": "metaopt.tools.compare.plots",
        "interpret": "metaopt.tools.compare.report",
        "render_report": "metaopt.tools.compare.report",
        "compare_methods": "metaopt.tools.compare.run",
        "Timing": "metaopt.tools.compare.timing",
        "time_meta_iterations": "metaopt.tools.compare.timing",
    },
)

__all__ = [
    "DEFAULT_STEPS",
    "HELDOUT_KEY",
    "OTHER_BATCH",
    "REFERENCE",
    "CompareOptions",
    "GradientAgreement",
    "MetaGradient",
    "SavedTensorMeter",
    "Timing",
    "add_compare_arguments",
    "agreement",
    "checkpoint_iterations",
    "compare_methods",
    "comparison_seeds",
    "cosine",
    "family_curve_key",
    "heldout_query_loss",
    "initial_state",
    "interpret",
    "layer_of",
    "meta_gradient",
    "method_config",
    "parse_methods",
    "plot_cosines",
    "plot_curves",
    "render_report",
    "run_compare_command",
    "summarize_batches",
    "time_meta_iterations",
]
