"""`autoresearch evolve --executor ray`, end to end: a real tiny search on a local Ray that
evolve starts itself, SIGKILLed with two experiments in flight, then resumed.

Slow (two Ray start-ups and a resume, about 1.5 minutes): run with `-m slow`. The Ray
runner itself, and the engine on two Ray slots, are tested in CI by test_ray_runner.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason='Ray is not installed: pip install "autoresearch[ray]"')

import git  # noqa: E402
from kill_resume import Plan, kill_and_resume, make_trial_repo  # noqa: E402

RAY_ON_A_CPU = "network = false\nray_gpus = 0\nray_cpus = 1\n"  # under [run]
# A local Ray that evolve started ends with it. Measured after a SIGKILL of evolve with two
# experiments in flight: the tasks' processes were gone within 3 s, Ray's own agents
# (ray::DashboardAgent, ray::RuntimeEnvAgent) after 60-62 s, on Ray's own timeout.
RAY_GONE_SECONDS = 90.0


@pytest.mark.slow
def test_evolve_on_ray_killed_with_two_in_flight_resumes_with_nothing_lost(tmp_path, corpus):
    repo = make_trial_repo(tmp_path, corpus)
    toml = repo / "autoresearch.toml"
    toml.write_text(toml.read_text().replace("[run]\n", "[run]\n" + RAY_ON_A_CPU, 1))
    with git.Repo(repo) as r:
        r.git.commit("-qam", "run on Ray")
    plan = Plan(1, "SIGKILL", 0.5, when_training=2)
    options = ("--executor", "ray", "--slots", "2")
    trial = kill_and_resume(repo, plan, extra=2, options=options, gone=RAY_GONE_SECONDS)
    # Among the checks: no process of the run (its local Ray included) outlived it.
    assert not trial.problems(), trial.problems()
    assert len(trial.training_at_signal) == 2, trial.training_at_signal
    after = {r["id"]: r for r in trial.after}
    # Both trained again and scored; which is kept depends on which of the two slots ends
    # first (population 2: the second may be worse than both members), so either may not be.
    cut = {cid: (after[cid]["status"], after[cid]["reason"]) for cid in trial.training_at_signal}
    assert all(
        status in ("keep", "discard") and reason == "trained and evaluated"
        for status, reason in cut.values()
    ), cut
    assert all(r["ran_on"].startswith("ray ") for r in trial.after)
