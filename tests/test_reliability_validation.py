"""Bad input: every field validated in one place with a message naming flag, value and what is
allowed; the command exits 2 without a traceback; over the whole config space of ``train``,
``resolve_config`` either refuses with a ConfigError or gives a config that builds and runs."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import RToyFamily

from metaopt.cli import main
from metaopt.training import build_algorithm, build_outer_optimizer
from metaopt.training.algorithm_config import config_flag_names
from metaopt.training.config import resolve_config
from metaopt.training.family import ConfigError, TaskFamily, TrainConfig
from metaopt.training.registry import get_family

pytestmark = pytest.mark.usefixtures("one_thread")

#: (field, bad value, the message) for every field of TrainConfig; a new field without a line here
#: fails test_every_field_is_audited.
BAD = [
    ("algo", "sgd", "--algo must be one of maml, fomaml, metasgd, reptile, imaml; got 'sgd'"),
    ("preset", "", "--preset must be one of none; got ''"),
    ("inner_steps", 0, "--inner-steps must be an integer >= 1, got 0"),
    ("inner_steps", True, "--inner-steps must be an integer >= 1, got True"),
    ("inner_steps", 1.5, "--inner-steps must be an integer >= 1, got 1.5"),
    ("inner_lr", 0.0, "--inner-lr must be a positive finite number, got 0.0"),
    ("inner_lr", math.nan, "--inner-lr must be a positive finite number, got nan"),
    ("inner_lr", "0.1", "--inner-lr must be a positive finite number, got '0.1'"),
    ("inner_lr", True, "--inner-lr must be a positive finite number, got True"),
    ("inner_optimizer", "rmsprop", "--inner-optimizer must be one of sgd, adam; got 'rmsprop'"),
    ("meta_batch", 0, "--meta-batch must be an integer >= 1, got 0"),
    ("iterations", -1, "--iterations must be an integer >= 0, got -1"),
    ("outer_lr", math.inf, "--outer-lr must be a positive finite number, got inf"),
    ("outer_lr", -1e-3, "--outer-lr must be a positive finite number, got -0.001"),
    ("outer_optimizer", "rmsprop", "--outer-optimizer must be one of adam, sgd; got 'rmsprop'"),
    ("anneal", "yes", "--anneal must be true or false, got 'yes'"),
    ("seed", -1, "--seed must be an integer between 0 and 4294967295, got -1"),
    ("seed", 2**32, "--seed must be an integer between 0 and 4294967295, got 4294967296"),
    ("eval_seed", 2**40, "--eval-seed must be an integer between 0 and 4294967295, got"),
    ("eval_tasks", 0, "--eval-tasks must be an integer >= 1, got 0"),
    ("eval_every", -1, "--eval-every must be an integer >= 0, got -1"),
    ("checkpoint_every", -2, "--checkpoint-every must be an integer >= 0, got -2"),
    ("skip_nonfinite", 1, "--skip-nonfinite must be true or false, got 1"),
    ("positive_rates", "yes", "--positive-rates must be true or false, got 'yes'"),
    ("engine", "gpu", "--engine must be one of auto, vmap, loop, compiled; got 'gpu'"),
    ("batch_norm", "per-task", "--batch-norm must be one of running, batch; got 'per-task'"),
    ("out", "", "--out must be a non-empty string, got ''"),
    ("dist_backend", "mpi", "--dist-backend must be one of auto, gloo, nccl; got 'mpi'"),
    ("device", "tpu", "--device must be one of auto, cpu, cuda, cuda:N, mps; got 'tpu'"),
    ("device", "cuda", "--device must be auto or cpu for this family (it samples and trains"),
    ("precision", "fp8", "--precision must be one of fp32, bf16, fp16; got 'fp8'"),
    ("precision", "bf16", "--precision must be fp32 for this family (it has no mixed-precision"),
    ("dist_timeout", 0, "--dist-timeout must be a positive finite number, got 0"),
    ("threads", -1, "--threads must be an integer >= 0, got -1"),
    ("max_memory", -1, "--max-memory must be a finite number >= 0, got -1"),
    ("clip_grad_norm", -0.5, "--clip-grad-norm must be a finite number >= 0, got -0.5"),
    ("adapt", 3, "--adapt takes comma-separated names, got 3"),
    ("reg", 0.0, "--reg must be a positive finite number, got 0.0"),
    ("cg_steps", 0, "--cg-steps must be an integer >= 1, got 0"),
    ("solver", "gmres", "--solver must be one of cg, minres, normal_cg; got 'gmres'"),
    ("cg_tol", -1.0, "--cg-tol must be a positive finite number, got -1.0"),
    ("inner_tol", -1.0, "--inner-tol must be a finite number >= 0, got -1.0"),
    ("power_iterations", -1, "--power-iterations must be an integer >= 0, got -1"),
    ("inner_momentum", "on", "--inner-momentum must be true or false, got 'on'"),
    (
        "on_solve_failure",
        "retry",
        "--on-solve-failure must be one of stop, skip, damp; got 'retry'",
    ),
    ("curvature", "fisher", "--curvature must be one of hessian, gauss-newton; got 'fisher'"),
    ("unroll_checkpoints", 0, "--unroll-checkpoints must be an integer >= 1, got 0"),
    ("lslr", "yes", "--lslr must be true or false, got 'yes'"),
    ("outer_schedule", "step", "--outer-schedule must be one of constant, linear, cosine; got"),
    ("outer_lr_min", -1.0, "--outer-lr-min must be a finite number >= 0, got -1.0"),
    ("first_order_until", -1, "--first-order-until must be an integer >= 0, got -1"),
    ("multi_step_loss", 1, "--multi-step-loss must be true or false, got 1"),
    ("msl_iterations", 0, "--msl-iterations must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD)
def test_each_field_names_itself_its_value_and_the_range(
    name: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_config(RToyFamily(), {name: value})
    assert str(error.value).startswith(message)


def test_every_field_is_audited() -> None:  # the run's fields and the algorithms' options
    assert config_flag_names(TrainConfig) == {name for name, _, _ in BAD}


def test_imaml_has_defaults_of_its_own_under_the_flags() -> None:
    from metaopt.training.family import TrainConfig as Base

    own = Base.ALGORITHM_DEFAULTS["imaml"]
    config = resolve_config(RToyFamily(), {"algo": "imaml"})
    flat = {**dataclasses.asdict(config), **config.algo_options["imaml"]}  # run and its options
    assert {name: flat[name] for name in own} == dict(own)
    assert resolve_config(RToyFamily(), {"algo": "imaml", "reg": 7.0}).options.reg == 7.0
    maml = resolve_config(RToyFamily(), {"algo": "maml"})
    assert maml.algo_options == {"maml": {"unroll_checkpoints": None, "lslr": False}}  # no iMAML


def test_imaml_takes_gauss_newton_on_every_engine() -> None:
    for engine in ("loop", "vmap", "auto"):
        config = resolve_config(RToyFamily(), {"algo": "imaml", "engine": engine})
        assert config.options.curvature == "gauss-newton"


def test_imaml_refuses_a_tolerance_with_adam() -> None:
    with pytest.raises(ConfigError, match="--inner-tol 0.01 needs --inner-optimizer sgd"):
        resolve_config(RToyFamily(), {"algo": "imaml", "inner_optimizer": "adam"})
    off = {"inner_optimizer": "adam", "inner_tol": 0.0, "power_iterations": 0}
    with pytest.raises(ConfigError, match="--inner-momentum needs .* --no-inner-momentum"):
        resolve_config(RToyFamily(), {"algo": "imaml", **off, "inner_momentum": True})
    assert resolve_config(RToyFamily(), {"algo": "imaml", **off}).inner_optimizer == "adam"


def test_positive_rates_is_refused_for_algorithms_without_learned_rates() -> None:
    with pytest.raises(ConfigError, match="--positive-rates applies to --algo metasgd"):
        resolve_config(RToyFamily(), {"algo": "maml", "positive_rates": True})


def test_metasgd_refuses_an_inner_optimizer_it_would_ignore() -> None:
    with pytest.raises(ConfigError, match="--inner-optimizer must be sgd with --algo metasgd"):
        resolve_config(RToyFamily(), {"algo": "metasgd", "inner_optimizer": "adam"})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seed", "4294967296"], "--seed must be an integer between 0 and 4294967295"),
        (["--algo", "metasgd", "--inner-optimizer", "adam"], "--inner-optimizer must be sgd"),
        (["--outer-lr", "nan"], "--outer-lr must be a positive finite number, got nan"),
        (["--eval-tasks", "0"], "--eval-tasks must be an integer >= 1, got 0"),
        (
            ["--algo", "imaml", "--on-solve-failure", "retry"],
            "--on-solve-failure must be one of stop, skip, damp; got 'retry'",
        ),
        (["--out", "{file}"], "exists and is not a directory"),
        (["--out", "{file}/below"], "cannot be created"),
        (["--out", "{full}"], "is not empty and is not a metaopt run directory; choose a new"),
    ],
)
def test_cli_user_errors_exit_2_in_one_line(
    tmp_path: Path, argv: list[str], message: str, capsys
) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    argv = [a.format(file=tmp_path / "file", full=tmp_path / "full") for a in argv]
    assert main(["train", "rtoy", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaopt: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_adapt_the_model_lacks_is_refused_before_the_run_directory_exists(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="--adapt nope: adapt: 'nope' names no parameter"):
        resolve_config(RToyFamily(), {"adapt": "nope"})
    assert main(["train", "rtoy", "--adapt", "nope", "--out", str(out), "--quiet"]) == 2
    assert "names no parameter" in capsys.readouterr().err
    assert not out.exists()  # so the same --out works once the flag is fixed


@pytest.mark.parametrize("argv", [["--inner-lr", "fast"], ["--skip-nonfinite", "yes"], ["--nope"]])
def test_cli_flag_syntax_errors_exit_2_without_traceback(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "rtoy", *argv])
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


# -- the config space of ``train``, by property -------------------------------------------------

JUNK: list[Any] = ["", "nope", None, True, -1, 1.5, math.nan, math.inf, (1, -2)]


def _field_strategy(config_class: type[TrainConfig], field: dataclasses.Field) -> st.SearchStrategy:
    """The default and typical values of the field's type, in range or not."""
    kind = typing.get_type_hints(config_class)[field.name]
    default = field.default
    typical: st.SearchStrategy
    if kind is bool:
        typical = st.booleans()
    elif kind is int:
        typical = st.integers(-1, 5)
    elif kind is float:
        typical = st.floats(-1.0, 2.0) | st.sampled_from([1e-3, 0.0, 1e300])
    elif typing.get_origin(kind) is tuple:
        typical = st.lists(st.integers(-1, 4), max_size=3).map(tuple)
    elif field.name == "algo":
        typical = st.sampled_from(["maml", "fomaml", "metasgd", "reptile"])
    elif field.name in ("inner_optimizer", "outer_optimizer"):
        typical = st.sampled_from(["sgd", "adam"])
    elif field.name == "engine":
        typical = st.sampled_from(["auto", "vmap", "loop"])
    else:
        typical = st.just(default)
    return st.just(default) | typical


@st.composite
def _overrides(draw: st.DrawFn, family: TaskFamily) -> dict[str, Any]:
    """Some fields set to typical values, and sometimes one of them to junk of another type."""
    skip = {"out", "data_dir", "download"}  # the file system is tested above
    fields = [f for f in dataclasses.fields(family.config_class) if f.name not in skip]
    optional = {f.name: _field_strategy(family.config_class, f) for f in fields}
    optional["preset"] = st.sampled_from([None, "nope", *family.presets])
    values = draw(st.fixed_dictionaries({}, optional=optional))
    if draw(st.booleans()):
        values[draw(st.sampled_from(sorted(optional)))] = draw(st.sampled_from(JUNK))
    return values


def _check_config_space(family: TaskFamily, overrides: dict[str, Any]) -> None:
    try:
        config = resolve_config(family, overrides)
    except ConfigError:
        return
    # A config that passes validation builds and runs one meta-iteration without an exception.
    algo = build_algorithm(config, family.make_model(config))
    build_outer_optimizer(config, algo)
    tasks = family.sample_tasks(config, np.random.default_rng(0), min(config.meta_batch, 2))
    algo.meta_backward(tasks)


@pytest.mark.parametrize("name", ["rtoy", "sine", "classify", "mdp"])
def test_config_space_of_train(name: str) -> None:
    family = get_family(name)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(overrides=_overrides(family))
    def check(overrides: dict[str, Any]) -> None:
        _check_config_space(family, overrides)

    check()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    assert main(["train", "rtoy", "--iterations", "2", "--out", str(out), "--quiet"]) == 0
    return out


def test_config_space_of_eval(small_run: Path) -> None:
    from metaopt.training import evaluate_run

    @settings(max_examples=25, deadline=None)
    @given(
        tasks=st.none() | st.integers(-2, 4),
        steps=st.none() | st.lists(st.integers(-2, 3), max_size=3),
    )
    def check(tasks: int | None, steps: list[int] | None) -> None:
        try:
            evaluation = evaluate_run(small_run, num_tasks=tasks, steps=steps)
        except ConfigError:
            assert (tasks is not None and tasks < 1) or (
                steps is not None and (not steps or min(steps) < 0)
            )
            return
        assert evaluation["tasks"] == (tasks or 5)
        assert set(evaluation["by_steps"]) == {str(s) for s in (steps or (0, 1))}
        assert all(math.isfinite(v["mean"]) for v in evaluation["by_steps"].values())

    check()
