"""HalfCheetah velocity and direction: the refusal without MuJoCo, the environments, and the
batched sampler replayed step by step in Gymnasium's ``HalfCheetah-v5``.

The refusal tests run everywhere (MuJoCo's absence is simulated); the others need the extra
(``pip install -e '.[mujoco]'``) and are skipped without it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from metaopt.cli import main

INSTALL = "pip install -e '.[mujoco]'"


@pytest.fixture
def without_mujoco(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import mujoco`` fails and ``importlib.util.find_spec("mujoco")`` is ``None``."""
    monkeypatch.setitem(sys.modules, "mujoco", None)


@pytest.mark.usefixtures("without_mujoco")
def test_families_lists_the_cheetah_families_as_unavailable_with_the_install_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["families"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("cheetah-vel", "cheetah-dir"):
        (line,) = [line for line in lines if line.startswith(f"{name} ")]
        assert "(unavailable: needs mujoco" in line and INSTALL in line
    assert any(line.startswith("nav2d ") and "unavailable" not in line for line in lines)


@pytest.mark.usefixtures("without_mujoco")
@pytest.mark.parametrize("command", ["train", "compare", "scale"])
def test_a_cheetah_family_refuses_in_one_line_without_mujoco(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "cheetah-vel", "--iterations", "5", "--meta-batch", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("metaopt: error: task family 'cheetah-vel' needs mujoco")
    assert INSTALL in err


def test_the_bench_registers_no_cheetah_case_without_mujoco(without_mujoco: None) -> None:
    from benchmarks.bench_cheetah import cases

    assert cases(quick=True) == []


# Everything below needs MuJoCo.


def _env(task: str):  # type: ignore[no-untyped-def]
    pytest.importorskip("mujoco")
    import gymnasium as gym

    from rl.cheetah.env import ENV_IDS, register

    register()
    register()  # idempotent
    return gym.make(ENV_IDS[task])


@pytest.mark.parametrize("task", ["vel", "dir"])
def test_env_registers_explicitly_and_passes_check_env(task: str) -> None:
    env = _env(task)
    from gymnasium.utils.env_checker import check_env

    check_env(env.unwrapped, skip_render_check=True)
    assert env.spec is not None and env.spec.max_episode_steps == 100
    first, _ = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    assert np.array_equal(first, again)


def test_goals_are_checked_and_drawn_from_the_tasks_distributions() -> None:
    env = _env("dir")
    from rl.cheetah.env import HalfCheetahDirEnv, HalfCheetahVelEnv, sample_goals

    with pytest.raises(ValueError, match="goal of dir must be -1 or 1, got 0.5"):
        env.unwrapped.reset_task(0.5)
    with pytest.raises(ValueError, match="goal of vel must be a finite number"):
        HalfCheetahVelEnv(goal=float("nan"))
    velocities = sample_goals(np.random.default_rng(0), "vel", 2000)
    assert 0 <= velocities.min() < 0.01 and 1.99 < velocities.max() <= 2
    directions = sample_goals(np.random.default_rng(0), "dir", 2000)
    assert set(np.unique(directions)) == {-1.0, 1.0} and abs(directions.mean()) < 0.1
    assert HalfCheetahDirEnv(goal=-1).goal == -1.0


@pytest.mark.parametrize(("task", "threads"), [("vel", 1), ("dir", 1), ("vel", 3)])
def test_sampler_replays_bit_for_bit_in_gymnasiums_half_cheetah(task: str, threads: int) -> None:
    """The sampler's episodes (a float64 policy, so nothing is rounded on the way), their actions
    fed one by one to ``HalfCheetah-v5`` itself after ``reset(seed=...)`` with each episode's
    seed, give the same observations bit for bit, and the rewards the task's formula gives from
    that environment's ``x_velocity``; ``HalfCheetahVel-v0``/``Dir-v0`` give the same rewards."""
    pytest.importorskip("mujoco")
    import gymnasium as gym
    import torch

    from rl.cheetah.env import sample_goals
    from rl.cheetah.sampler import CheetahDynamics, episode_seeds
    from rl.continuous import GaussianMLPPolicy, GaussianNoise, rollout

    tasks, episodes, horizon = 3, 2, 100
    rng = np.random.default_rng(7)
    goals, seeds = sample_goals(rng, task, tasks), episode_seeds(rng, tasks, episodes)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, (64, 64), init_log_std=0.0, activation="tanh").double()
    noise = GaussianNoise.draw(
        torch.Generator().manual_seed(1), horizon, tasks, episodes, 6, torch.float64
    )
    dynamics = CheetahDynamics(task, goals, seeds, dtype=torch.float64, threads=threads)
    sampled = rollout(policy, dynamics, noise)
    dynamics.close()
    reference, ours = gym.make("HalfCheetah-v5"), _env(task)
    for t in range(tasks):
        ours.unwrapped.reset_task(goals[t])
        for n in range(episodes):
            obs, _ = reference.reset(seed=int(seeds[t, n]))
            own_obs, _ = ours.reset(seed=int(seeds[t, n]))
            assert np.array_equal(own_obs, obs)
            observations, rewards, own_rewards = [obs], [], []
            for step in range(horizon):
                action = sampled.actions[step, t, n].numpy()
                obs, _, _, _truncated, info = reference.step(action)
                _, own_reward, _, own_truncated, _ = ours.step(action)
                velocity, control = info["x_velocity"], 0.05 * float(np.sum(action**2))
                task_term = -abs(velocity - goals[t]) if task == "vel" else goals[t] * velocity
                observations.append(obs)
                rewards.append(task_term - control)
                own_rewards.append(own_reward)
            assert own_truncated
            assert np.array_equal(np.stack(observations), sampled.observations[:, t, n].numpy())
            assert np.array_equal(np.array(own_rewards), sampled.rewards[:, t, n].numpy())
            np.testing.assert_allclose(
                sampled.rewards[:, t, n].numpy(), rewards, rtol=0, atol=1e-12
            )


TINY = ["--trajectories", "3", "--horizon", "10", "--eval-tasks", "3", "--test-tasks", "2"]
TINY += ["--pretrain-iterations", "1", "--eval-every", "0"]


@pytest.mark.parametrize("family", ["cheetah-vel", "cheetah-dir"])
def test_train_runs_maml_trpo_and_pairs_the_baselines_per_goal(family: str, tmp_path) -> None:
    pytest.importorskip("mujoco")
    import json

    out = tmp_path / "run"
    flags = ["--iterations", "2", "--meta-batch", "2", *TINY, "--out", str(out), "--quiet"]
    assert main(["train", family, *flags]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("trpo_kl" in row for row in rows)  # MAML-TRPO by default
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["tasks"] == 3
    for key in ("baseline", "random_baseline", "meta_minus_baseline", "meta_minus_random"):
        assert key in evaluation
    assert (out / "rl_adaptation.png").stat().st_size > 0
    assert (out / "cheetah_velocity.png").stat().st_size > 0


def test_the_velocity_picture_reads_the_torsos_velocity_of_each_goals_episode(tmp_path) -> None:
    """The curves start at ``qvel[0]`` of ``HalfCheetah-v5``'s ``reset(seed)`` for each goal's
    episode seed (so the observation index is the forward velocity), one per policy and step."""
    pytest.importorskip("mujoco")
    import gymnasium as gym

    from metaopt.training.evaluation import load_run

    out = tmp_path / "run"
    flags = ["--iterations", "1", "--meta-batch", "2", *TINY, "--out", str(out), "--quiet"]
    assert main(["train", "cheetah-vel", *flags]) == 0
    family, config, algo = load_run(out)
    data = family.velocities(algo, family.own_config(config), num_goals=2)
    assert set(data["velocities"]) == {"meta-learned", "pretrained", "random initialisation"}
    env = gym.make("HalfCheetah-v5")
    start = [env.unwrapped.reset(seed=int(seed))[0] for seed in data["seeds"]]
    assert data["dt"] == pytest.approx(0.05)
    for by_steps in data["velocities"].values():
        assert sorted(by_steps) == [0, 1]
        for velocity in by_steps.values():
            assert velocity.shape == (2, 11) and np.isfinite(velocity).all()
            for g, obs in enumerate(start):
                assert velocity[g, 0] == np.float32(obs[8])


def test_the_same_seed_trains_the_same_run(tmp_path) -> None:
    """Episode seeds and policy noise come from the run's seed: two runs match row for row."""
    pytest.importorskip("mujoco")
    rows = []
    for name in ("a", "b"):
        out = tmp_path / name
        flags = ["--iterations", "2", "--meta-batch", "2", *TINY, "--out", str(out), "--quiet"]
        assert main(["train", "cheetah-dir", "--seed", "3", *flags]) == 0
        text = (out / "metrics.jsonl").read_text()
        rows.append(
            [
                {k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in text.splitlines()
            ]
        )
    assert rows[0] == rows[1]


@pytest.mark.slow
def test_the_issues_command_runs_end_to_end(tmp_path) -> None:
    """``metaopt train cheetah-vel --iterations 5 --meta-batch 4`` at the other defaults (its
    200-step pretrained baseline and 100 evaluation goals take most of its minutes)."""
    pytest.importorskip("mujoco")
    out = tmp_path / "run"
    flags = ["--iterations", "5", "--meta-batch", "4", "--out", str(out), "--quiet"]
    assert main(["train", "cheetah-vel", *flags]) == 0
    assert (out / "eval.json").exists()


def test_the_sampler_bench_case_times_every_row_with_steps_per_second_and_cores(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mujoco")
    import json

    path = tmp_path / "bench.json"
    flags = ["--quick", "--threads", "1", "--repeats", "1", "--no-memory", "--json", str(path)]
    assert main(["bench", "--cases", "cheetah-vel-sampler", *flags]) == 0
    assert "steps/s/core" in capsys.readouterr().out
    rows = {r["impl"]: r for r in json.loads(path.read_text()) if "median_s" in r}
    cores = {"metaopt-threads1": 1, "metaopt-threads2": 2, "gymnasium-sync": 1}
    cores |= {"gymnasium-async": 2, "maml-rl-workers": 2}
    assert {name: row["cores"] for name, row in rows.items()} == cores
    for row in rows.values():  # 4 tasks × 5 episodes × 20 steps
        assert row["steps_per_second"] == pytest.approx(400 / row["median_s"])
        assert row["steps_per_second_per_core"] == pytest.approx(
            row["steps_per_second"] / row["cores"]
        )
    assert rows["gymnasium-sync"]["max_rel_grad_diff"] < 1e-6
    assert rows["maml-rl-workers"]["max_rel_grad_diff"] is None


def test_a_run_resumed_with_more_iterations_is_the_uninterrupted_run(tmp_path) -> None:
    """Exact resume, which the long HalfCheetah runs rely on: 2 iterations then ``--resume
    --iterations 3`` is the 3-iteration run bit for bit (metrics and final checkpoint)."""
    pytest.importorskip("mujoco")
    from reliability_helpers import assert_same_run

    flags = ["--meta-batch", "2", *TINY, "--checkpoint-every", "1", "--quiet"]
    assert (
        main(["train", "cheetah-vel", "--iterations", "3", *flags, "--out", str(tmp_path / "a")])
        == 0
    )
    assert (
        main(["train", "cheetah-vel", "--iterations", "2", *flags, "--out", str(tmp_path / "b")])
        == 0
    )
    assert (
        main(
            [
                "train",
                "cheetah-vel",
                "--resume",
                str(tmp_path / "b"),
                "--iterations",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_a_shard_of_the_meta_batch_samples_the_episodes_the_whole_batch_samples(tmp_path) -> None:
    """What torchrun relies on: at 20 episodes per goal (the default), tasks 1-2 sampled as a
    shard give the episodes they get in the whole batch of 4, bit for bit, unadapted and after
    an inner step. (With 2 or 3 episodes per goal the policy forward's kernel rounds differently
    with the batch's shape.)"""
    pytest.importorskip("mujoco")
    from metaopt.training.evaluation import load_run

    out = tmp_path / "run"
    flags = ["--iterations", "1", "--meta-batch", "2", *TINY[4:], "--horizon", "10"]
    assert main(["train", "cheetah-vel", *flags, "--out", str(out), "--quiet"]) == 0
    family, config, algo = load_run(out)
    config = family.own_config(config)
    assert config.trajectories == 20
    for steps in (0, 1):
        whole = family.test_batch(config, 4)
        shard = whole.select(slice(1, 3))  # its noise: the whole batch's, sliced (as torchrun's)
        a = whole.sample_queries(algo.adapt_batch(whole, steps))
        b = shard.sample_queries(algo.adapt_batch(shard, steps))
        assert torch.equal(a.observations[:, 1:3], b.observations)
        assert torch.equal(a.rewards[:, 1:3], b.rewards)
