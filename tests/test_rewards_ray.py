"""Fault injection on the Ray backend (skipped only when ray is not importable).

One local Ray instance for the module; the same checks as test_rewards_faults.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from progrl.rewards import RewardConfig, RewardEngine
from test_rewards_faults import EXPECTED, alive, check_fault

ray = pytest.importorskip("ray")
FAULTS = str(Path(__file__).with_name("reward_faults.py"))


@pytest.fixture(scope="module")
def ray_instance():
    started = not ray.is_initialized()
    if started:  # logical CPUs for three engines of two 1-CPU actors each
        ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


def ray_config(**kw) -> RewardConfig:
    # 1.5 s rather than 1 s: Ray itself takes up to ~1.5 s to report a dead actor (crash faults)
    return RewardConfig(backend="ray", timeout=1.5, workers=2, memory_mb=1024, **kw)


@pytest.fixture(scope="module")
def ray_engine(ray_instance):
    with RewardEngine(ray_config(), [f"{FAULTS}:faulty"]) as eng:
        eng.score(["p"], ["warm"], {"fault": ["ok"]})  # actors up before timing anything
        yield eng


@pytest.fixture(scope="module")
def ray_batched_engine(ray_instance):
    with RewardEngine(ray_config(batch_size=2), [f"{FAULTS}:faulty_batched"]) as eng:
        eng.score(["p"], ["warm"], {"fault": ["ok"]})
        yield eng


@pytest.mark.parametrize("fault", list(EXPECTED))
def test_ray_fault(ray_engine, fault):
    check_fault(ray_engine, fault, batched=False)


@pytest.mark.parametrize("fault", ["sleep", "abort", "raise", "length"])
def test_ray_batched_fault(ray_batched_engine, fault):
    check_fault(ray_batched_engine, fault, batched=True)


def test_ray_actors_do_not_outlive_the_engine(ray_instance):
    eng = RewardEngine(ray_config(), [f"{FAULTS}:faulty"])

    def both_actors_idle() -> set[int]:
        # worker_pids() lists idle actors only; one fast actor can score a whole small batch
        # while the other is still starting, so wait until both are up.
        deadline = time.monotonic() + 30
        while len(eng.backend.worker_pids()) < 2:
            eng.score(["p"], ["a"], {"fault": ["ok"]})
            assert time.monotonic() < deadline
            time.sleep(0.05)
        return set(eng.backend.worker_pids())

    eng.score(["p", "p"], ["a", "b"], {"fault": ["ok", "ok"]})
    pids = both_actors_idle()
    eng.score(["p", "p"], ["a", "b"], {"fault": ["ok", "sleep"]})  # one actor killed and replaced
    pids |= both_actors_idle()
    assert len(pids) == 3
    eng.close()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, "reward actors still running after close()"
        time.sleep(0.1)


# ----------------------------------------------------------------------------- trust (issue 9)

HOSTILE = str(Path(__file__).with_name("reward_hostile.py"))


def test_ray_actor_returns_only_a_json_line():
    """What crosses Ray's transport from an actor is bytes holding one JSON line (validated on the driver)."""
    from progrl.rewards.ray_backend import RewardActor
    from progrl.rewards.spec import FunctionSpec
    from progrl.rewards.wire import decode, parse_reply, parse_start

    actor = RewardActor(memory_mb=None, show_output=False)  # the class body, called directly
    ready = actor.load([FunctionSpec("faulty", f"{FAULTS}:faulty")])
    assert type(ready) is bytes and parse_start(decode(ready[:-1]), ["faulty"])[0] == "ready"
    reply = actor.evaluate(5, 0, ["p", "p"], ["ab", "c"], {"fault": ["ok", "raise"]})
    assert type(reply) is bytes
    outcomes, recycle = parse_reply(decode(reply[:-1]), 5, 2)
    assert outcomes[0].value == 2.0 and outcomes[1].kind == "error" and recycle is False


@pytest.mark.parametrize("fn, kind, fragment", [
    ("raise_unprintable", "error", "its __str__ raised RuntimeError"),
    ("return_broken_real", "type", "could not be converted to a float (ValueError: cannot convert me)"),
])
def test_ray_unclassifiable_results_are_clear_failures(ray_instance, fn, kind, fragment):
    with RewardEngine(RewardConfig(functions=[f"{HOSTILE}:{fn}"], backend="ray", timeout=5, workers=1)) as eng:
        res = eng.score(["p"], ["a"])
    assert res.failures[kind] == 1 and fragment in res.errors[0]


@pytest.mark.parametrize("kind, fragment", [("raise", "ZeroDivisionError: boom at import"),
                                            ("exit0", "the reward actor died while loading it")])
def test_ray_import_faults_are_one_spec_error_line(ray_instance, tmp_path, kind, fragment):
    import reward_hostile
    from progrl.rewards import RewardSpecError

    path = tmp_path / f"ray_import_{kind}.py"
    path.write_text(reward_hostile.import_fault_module(kind))
    with pytest.raises(RewardSpecError, match=fragment) as info:
        RewardEngine(RewardConfig(functions=[f"{path}:f"], backend="ray", timeout=5, workers=1))
    assert "\n" not in str(info.value)
