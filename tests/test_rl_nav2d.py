"""2-D navigation: the environment, the vectorised Gaussian sampler against it, the log-density,
the engines' agreement, and ``metaopt train nav2d`` / ``metaopt eval`` with a tiny budget."""

from __future__ import annotations

import json
import math
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torch import nn

import metaopt
from metaopt.cli import main
from rl.continuous import (
    ContinuousTrajectories,
    GaussianMLPPolicy,
    GaussianNoise,
    GaussianScorer,
    discounted_returns,
    linear_feature_baseline,
    rollout,
)
from rl.nav2d.env import ENV_ID, Nav2DEnv, register
from rl.nav2d.task import Nav2DDynamics, Nav2DTaskBatch
from rl.task import A2CSettings

GOALS = np.array([[0.3, -0.2], [-0.05, 0.04], [0.4, 0.4]])


def test_env_registers_explicitly_and_passes_check_env() -> None:
    register()
    register()  # idempotent
    env = gym.make(ENV_ID)
    check_env(env.unwrapped, skip_render_check=True)
    assert env.spec is not None and env.spec.max_episode_steps == 100
    with pytest.raises(ValueError, match="goal must be 2 finite numbers"):
        Nav2DEnv(goal=[0.1])


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ((0, 3, 4, 2), "horizon"),
        ((30, 0, 4, 2), "num_tasks"),
        ((30, 3, -1, 2), "num_trajectories"),
        ((30, 3, 4, 2.0), "action_dim"),
    ],
)
def test_noise_of_a_bad_size_is_refused_naming_it(sizes: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=rf"^{message}\b.*must be an integer >= 1"):
        GaussianNoise.draw(torch.Generator().manual_seed(1), *sizes)


def test_sampler_replays_exactly_in_the_environment() -> None:
    """Every sampled episode, its actions fed to the environment one by one, gives the same
    rewards and ends at the same step."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (8,), init_log_std=-6.0)
    with torch.no_grad():  # a near-deterministic walk along the diagonal: goal 2 is reached
        policy.mean_head.weight.zero_()
        policy.mean_head.bias.fill_(0.15)
    noise = GaussianNoise.draw(torch.Generator().manual_seed(1), 30, 3, 4, 2)
    goals = torch.tensor(GOALS, dtype=torch.float32)
    trajectories = rollout(policy, Nav2DDynamics(goals), noise)
    env = Nav2DEnv(max_episode_steps=30)
    ended = 0
    for task in range(3):
        env.reset_task(GOALS[task].astype(np.float32))
        for episode in range(4):
            env.reset()
            for step in range(30):
                action = trajectories.actions[step, task, episode].double().numpy()
                _, reward, terminated, truncated, _ = env.step(action)
                assert trajectories.mask[step, task, episode] == 1
                assert reward == pytest.approx(
                    trajectories.rewards[step, task, episode].item(), abs=1e-5
                )
                if terminated or truncated:
                    break
            assert trajectories.continues[step, task, episode] == (0 if terminated else 1)
            assert trajectories.mask[step + 1 :, task, episode].sum() == 0
            ended += terminated
    assert ended >= 1  # the termination path was exercised


def test_sampler_matches_the_environment_in_distribution() -> None:
    """The environment driven by its own generator's Gaussian actions and the sampler, under the
    same policy: mean return within 5 standard errors of each other."""
    mean, std, goal = np.array([0.03, -0.02]), 0.1, np.array([0.2, -0.1], dtype=np.float32)
    env, rng = Nav2DEnv(goal=goal, max_episode_steps=20), np.random.default_rng(0)
    env_returns = []
    for _ in range(400):
        env.reset()
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(mean + std * rng.standard_normal(2))
            total, done = total + reward, terminated or truncated
        env_returns.append(total)

    def policy(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = (*obs.shape[:-1], 2)
        means = torch.tensor(mean, dtype=torch.float32).expand(shape)
        return means, torch.full(shape, math.log(std)), obs[..., 0]

    noise = GaussianNoise.draw(torch.Generator().manual_seed(0), 20, 1, 400, 2)
    sampled = rollout(policy, Nav2DDynamics(torch.tensor(goal)[None]), noise).episode_returns()[0]
    a, b = np.asarray(env_returns), sampled.double().numpy()
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert abs(a.mean() - b.mean()) < 5 * se


def test_log_density_and_entropy_match_torch_distributions() -> None:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (8,), init_log_std=-0.5)
    noise = GaussianNoise.draw(torch.Generator().manual_seed(2), 6, 2, 3, 2)
    trajectories = rollout(policy, Nav2DDynamics(torch.zeros(2, 2) + 0.3), noise)
    scores = GaussianScorer()(policy, trajectories)
    mean, log_std, values = policy(trajectories.observations[:-1])
    reference = torch.distributions.Normal(mean, log_std.exp())
    expected = reference.log_prob(trajectories.actions).sum(-1)
    torch.testing.assert_close(scores.log_probs, expected * trajectories.mask)
    torch.testing.assert_close(scores.entropy(), reference.entropy().sum(-1))
    torch.testing.assert_close(scores.values[:-1], values)


@pytest.mark.parametrize("estimator", ["dice", "lvc"])
def test_loop_and_vectorised_engines_agree(estimator: str) -> None:
    settings = A2CSettings(trajectories=3, horizon=8, meta_gradient=estimator)
    grads = []
    for engine in ("loop", "vmap"):
        torch.manual_seed(0)
        policy = GaussianMLPPolicy(2, 2, (8,))
        algo = metaopt.MAML(policy, inner_lr=0.1, engine=engine)
        algo.meta_backward(Nav2DTaskBatch(GOALS, settings, torch.Generator().manual_seed(0)))
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
    assert grads[0].abs().sum() > 0


TINY = [
    "--iterations", "2", "--meta-batch", "3", "--trajectories", "3", "--horizon", "10",
    "--hidden-sizes", "8", "--eval-every", "1", "--test-tasks", "3", "--eval-tasks", "4",
    "--pretrain-iterations", "2",
]  # fmt: skip


@pytest.mark.parametrize(
    "algo",
    ["maml", *(pytest.param(a, marks=pytest.mark.slow) for a in ("fomaml", "metasgd", "reptile"))],
)
def test_train_and_eval_from_the_command_line(algo: str, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    assert main(["train", "nav2d", "--algo", algo, "--out", str(run), *TINY]) == 0
    evaluation = json.loads((run / "eval.json").read_text())
    assert set(evaluation["by_steps"]) == {"0", "1", "2", "3"}
    for key in ("after_minus_before", "meta_minus_baseline", "meta_minus_random"):
        assert set(evaluation[key]) == {"0", "1", "2", "3"}
    assert {"baseline", "random_baseline"} <= set(evaluation)
    assert (run / "nav2d_trajectories.png").stat().st_size > 0
    assert main(["eval", str(run), "--tasks", "4"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("outer", ["adam", pytest.param("trpo", marks=pytest.mark.slow)])
def test_resume_continues_exactly(tmp_path, outer) -> None:  # type: ignore[no-untyped-def]
    """Two iterations then one more by --resume give the metrics of three in one go (also with
    the trust-region outer step, whose line search must repeat exactly)."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    # A constant outer rate: an annealed schedule is built for the run's iterations, so --anneal
    # (nav2d's default) refuses a resume that changes them.
    tiny = [*TINY, "--no-anneal", "--outer-optimizer", outer]
    flags = [f if f != "2" else "3" for f in tiny]
    assert main(["train", "nav2d", "--out", str(whole), *flags]) == 0
    assert main(["train", "nav2d", "--out", str(parts), *tiny]) == 0
    assert main(["train", "nav2d", "--resume", str(parts), "--iterations", "3"]) == 0

    def rows(run):  # type: ignore[no-untyped-def]
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]

    assert rows(whole)[-1] == rows(parts)[-1]
    assert ("trpo_kl" in rows(whole)[-1]) == (outer == "trpo")


def test_initial_mean_is_near_zero_everywhere_on_the_plane() -> None:
    """The mean head starts at MEAN_HEAD_GAIN times PyTorch's initialisation, bias 0: no
    constant drift that a small σ would follow off the plane."""
    from rl.continuous import MEAN_HEAD_GAIN

    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (64, 64), init_log_std=-2.0)
    grid = torch.cartesian_prod(torch.linspace(-1, 1, 11), torch.linspace(-1, 1, 11))
    mean, log_std, _ = policy(grid)
    torch.manual_seed(0)
    plain = nn.Linear(64, 2)  # what the head would be without the scaling, for scale
    assert policy.mean_head.bias.abs().max() == 0
    assert mean.abs().max() < 0.01 < plain.weight.abs().max()
    assert MEAN_HEAD_GAIN <= 0.01
    torch.testing.assert_close(log_std, torch.full_like(log_std, -2.0))


def _walk(horizon: int = 30) -> tuple[GaussianMLPPolicy, ContinuousTrajectories]:
    """Episodes of a noisy diagonal walk, some of which reach goal 2 and end early."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (8,), init_log_std=-5.0)
    with torch.no_grad():
        policy.mean_head.weight.mul_(10.0)
        policy.mean_head.bias.fill_(0.05)
    noise = GaussianNoise.draw(torch.Generator().manual_seed(3), horizon, 3, 5, 2)
    goals = torch.tensor([[0.3, -0.2], [-0.05, 0.04], [0.1, 0.1]])
    return policy, rollout(policy, Nav2DDynamics(goals), noise)


def _reference_linear_baseline(trajectories: ContinuousTrajectories, gamma: float) -> np.ndarray:
    """rllab's linear feature baseline, one task and one step at a time in numpy: ridge least
    squares of the discounted returns-to-go on (s, s², τ, τ², τ³, 1), τ = t / H."""
    obs = trajectories.observations.double().numpy()
    rewards = trajectories.rewards.double().numpy()
    mask = trajectories.mask.numpy()
    continues = trajectories.continues.numpy()
    horizon, tasks, episodes = rewards.shape
    fitted = np.zeros((horizon + 1, tasks, episodes))
    for b in range(tasks):
        rows, targets, where = [], [], []
        for n in range(episodes):
            following = 0.0
            returns = np.zeros(horizon)
            for t in reversed(range(horizon)):
                following = rewards[t, b, n] + gamma * continues[t, b, n] * following
                returns[t] = following
            for t in range(horizon):
                if mask[t, b, n]:
                    s, tau = obs[t, b, n], t / horizon
                    rows.append([*s, *(s**2), tau, tau**2, tau**3, 1.0])
                    targets.append(returns[t])
                    where.append((t, n))
        phi, y = np.array(rows), np.array(targets)
        ridge = np.sqrt(1e-5) * np.eye(phi.shape[1])
        w = np.linalg.lstsq(np.vstack([phi, ridge]), np.r_[y, np.zeros(phi.shape[1])])[0]
        for (t, n), value in zip(where, phi @ w, strict=True):
            fitted[t, b, n] = value
    return fitted


def test_linear_feature_baseline_is_the_least_squares_fit_per_task() -> None:
    _, trajectories = _walk()
    assert trajectories.continues.min() == 0  # an episode ended early: the mask is exercised
    fitted = linear_feature_baseline(trajectories, 0.9).double().numpy()
    expected = _reference_linear_baseline(trajectories, 0.9)
    inside = np.concatenate([trajectories.mask.numpy(), np.zeros_like(fitted[:1])]) > 0
    np.testing.assert_allclose(fitted[inside], expected[inside], rtol=1e-4, atol=1e-4)
    assert (fitted[-1] == 0).all()  # no bootstrap at the horizon
    # Fitted per task: it explains most of the returns' variance, which a constant does not.
    returns = discounted_returns(trajectories.rewards, trajectories.continues, 0.9).numpy()
    residual = (returns - fitted[:-1])[inside[:-1]]
    assert residual.var() < 0.05 * returns[inside[:-1]].var()


@pytest.mark.parametrize("normalize", [False, True])
def test_a2c_loss_with_the_linear_baseline_has_the_gradient_of_its_formula(
    normalize: bool,
) -> None:
    """The policy term weighs log π by the returns-to-go minus the fitted baseline (standardised
    per task if asked); the critic still regresses on the returns-to-go (λ = 1)."""
    policy, trajectories = _walk()
    gamma, value_coef = 0.9, 0.5
    scorer = GaussianScorer(normalize, baseline="linear", gamma=gamma)
    settings = dict(gamma=gamma, gae_lambda=1.0, value_coef=value_coef, entropy_coef=0.0)
    loss = scorer.a2c_loss(policy, trajectories, per_task=True, **settings)
    got = torch.autograd.grad(loss.sum(), list(policy.parameters()))

    # Independently: the reference baseline and an explicit masked loss, per task.
    mask = trajectories.mask.double()
    returns = discounted_returns(trajectories.rewards.double(), trajectories.continues, gamma)
    advantages = returns - torch.from_numpy(_reference_linear_baseline(trajectories, gamma)[:-1])
    if normalize:
        count = mask.sum((0, 2), keepdim=True)
        centred = advantages - (advantages * mask).sum((0, 2), keepdim=True) / count
        advantages = centred / (((centred * mask) ** 2).sum((0, 2), keepdim=True) / count).sqrt()
    mean, log_std, values = policy(trajectories.observations)
    log_density = torch.distributions.Normal(mean[:-1], log_std[:-1].exp())
    log_probs = log_density.log_prob(trajectories.actions).sum(-1).double()
    per_task = -(log_probs * advantages * mask).sum((0, 2)) + value_coef * (
        (returns - values[:-1].double()) ** 2 * mask
    ).sum((0, 2))
    expected = torch.autograd.grad((per_task / mask.sum((0, 2))).sum(), list(policy.parameters()))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g.double(), e.double(), rtol=2e-3, atol=1e-5)


def test_critic_time_gives_the_critic_the_time_and_leaves_the_actor_as_it_was() -> None:
    torch.manual_seed(0)
    plain = GaussianMLPPolicy(2, 2, (8,), init_log_std=-1.0)
    torch.manual_seed(0)
    timed = GaussianMLPPolicy(2, 2, (8,), init_log_std=-1.0, critic_time=True)
    # Same actor (the actor torso is made first, as before the option existed); the critic's
    # first layer has one more input.
    torch.testing.assert_close(plain.torso[0].weight, timed.torso[0].weight)
    assert timed.value_torso is not None and timed.value_torso[0].in_features == 3
    with pytest.raises(ValueError, match="critic_time needs the critic's own torso"):
        GaussianMLPPolicy(2, 2, (8,), shared_torso=True, critic_time=True)

    seen: list[torch.Tensor] = []

    def recording(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen.append(obs)
        return timed(obs)

    noise = GaussianNoise.draw(torch.Generator().manual_seed(4), 5, 2, 3, 2)
    goals = torch.tensor([[0.3, 0.1], [-0.2, 0.4]])
    trajectories = rollout(recording, Nav2DDynamics(goals), noise, time_feature=True)
    assert trajectories.observations.shape[-1] == 2  # stored without the time
    for step, obs in enumerate(seen):
        assert obs.shape == (2, 3, 3) and (obs[..., 2] == step / 5).all()
    torch.testing.assert_close(obs[..., :2], trajectories.observations[step])

    scores = GaussianScorer(time_feature=True)(timed, trajectories)
    fraction = (torch.arange(6) / 5).view(6, 1, 1, 1).expand(6, 2, 3, 1)
    mean, _, values = timed(torch.cat([trajectories.observations, fraction], -1))
    torch.testing.assert_close(scores.values, values)
    # The actor ignores the time column: the log-densities are those of the plain policy with
    # the same mean head (made after the critic torso, so drawn differently).
    plain.mean_head.load_state_dict(timed.mean_head.state_dict())
    torch.testing.assert_close(scores.log_probs, GaussianScorer()(plain, trajectories).log_probs)
    late = timed(torch.cat([trajectories.observations, fraction.flip(0)], -1))
    torch.testing.assert_close(late[0], mean)
    assert not torch.allclose(late[2], values)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_activation_reaches_every_hidden_layer(activation: str) -> None:
    """``--activation``: the policy's and the critic's hidden layers use it, the heads do not,
    and relu (the default) builds the network it always built, draw for draw."""
    from metaopt.training.config import resolve_config
    from metaopt.training.registry import get_family

    family = get_family("nav2d")
    torch.manual_seed(0)
    model = family.make_model(resolve_config(family, {"activation": activation}))
    kind = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    for torso in (model.torso, model.value_torso):
        layers = list(torso)
        assert [type(m) for m in layers[1::2]] == [kind, kind]
        assert all(isinstance(m, nn.Linear) for m in layers[0::2])
    torch.manual_seed(0)
    default = family.make_model(resolve_config(family, {}))
    for (name, a), b in zip(model.state_dict().items(), default.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the activation draws nothing
    obs = torch.tensor([[0.3, -0.2]])
    hidden = model.torso[1](model.torso[0](obs))
    torch.testing.assert_close(hidden, getattr(torch, activation)(model.torso[0](obs)))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shared-torso", "--critic-time"], "--critic-time needs the critic's own torso"),
        (["--baseline", "mean"], "--baseline must be one of critic, linear; got 'mean'"),
        (["--activation", "gelu"], "--activation must be one of relu, tanh; got 'gelu'"),
    ],
)
def test_nav2d_flag_errors_exit_2_in_one_line(argv: list[str], message: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["train", "nav2d", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_signal_then_resume_is_bit_identical(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A run interrupted by SIGTERM and resumed ends exactly like an uninterrupted one."""
    from reliability_helpers import assert_same_run, family, interrupting

    from metaopt.training import TrainingInterrupted, resume, train
    from metaopt.training.config import resolve_config

    values = {
        "iterations": 6, "meta_batch": 3, "trajectories": 3, "horizon": 10,
        "hidden_sizes": (8,), "eval_every": 0, "checkpoint_every": 2, "clip_grad_norm": 0.5,
    }  # fmt: skip

    def run(out, fam):  # type: ignore[no-untyped-def]
        return train(fam, resolve_config(fam, {**values, "out": str(out)}), progress=False)

    full = run(tmp_path / "full", family("nav2d"))
    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "cut", interrupting(family("nav2d"), 3, signal.SIGTERM))
    resume(tmp_path / "cut", family=family("nav2d"), progress=False)
    assert_same_run(full, tmp_path / "cut")
