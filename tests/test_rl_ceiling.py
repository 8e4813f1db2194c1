"""``python -m benchmarks.mdp_ceiling``: the Bayesian planner's returns lie between the random and the
optimal policy's and grow with the data; its flags are checked like every command's."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.mdp_ceiling import main, posterior_plan_returns
from rl.tabular.family import MDPConfig, MDPFamily
from rl.tabular.mdp import optimal_return, random_policy_return


def test_the_plan_is_never_better_than_the_optimum_and_improves_with_data() -> None:
    config = MDPConfig()
    mdps = MDPFamily().test_mdps(config, 200)
    optimal = optimal_return(mdps, config.horizon)
    random = random_policy_return(mdps, config.horizon)
    scores = []
    for episodes in (2, 20, 200):
        returns = posterior_plan_returns(mdps, episodes, config.horizon, seed=episodes)
        assert np.all(returns <= optimal + 1e-9)  # no plan beats the optimal policy on its task
        scores.append(float(((returns - random) / (optimal - random)).mean()))
    assert 0 < scores[0] < scores[1] < scores[2] < 1, scores


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "1"], "--tasks must be an integer >= 2 (an interval needs two), got 1"),
        (["--episodes", "0,20"], "--episodes must be an integer >= 1, got 0"),
        (["--episodes", "many"], "--episodes: expected comma-separated int values"),
    ],
)
def test_bad_flags_exit_2_in_one_line(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
