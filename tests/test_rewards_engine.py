"""The reward engine's behaviour: functions, weights, columns, cache, drop, errors, pool lifecycle."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import reward_faults
from test_rewards_faults import alive, descendants, leftovers
from progrl.rewards import FAILURE_KINDS, RewardBackendError, RewardConfig, RewardEngine, RewardSpecError

FAULTS = str(Path(__file__).with_name("reward_faults.py"))


def length_reward(prompt, completion):
    return float(len(completion))


def answer_reward(prompt, completion, answer):
    return 1.0 if completion == answer else 0.0


def batched_prefix(prompts, completions, **columns):
    return [1.0 if c.startswith(p) else 0.0 for p, c in zip(prompts, completions)]


PROMPTS = ["a", "b", "c", "d"]
COMPLETIONS = ["a1", "x", "c333", "4"]


# ----------------------------------------------------------------------------- inline


def test_weights_and_several_functions():
    cfg = RewardConfig(backend="inline")
    with RewardEngine(cfg, [(length_reward, 0.5), (answer_reward, 2.0), (batched_prefix, 1.0)]) as eng:
        res = eng.score(PROMPTS, COMPLETIONS, {"answer": ["a1", "y", "c333", "z"]})
    assert res.per_function == {
        "length_reward": [2.0, 1.0, 4.0, 1.0],
        "answer_reward": [1.0, 0.0, 1.0, 0.0],
        "batched_prefix": [1.0, 0.0, 1.0, 0.0],
    }
    assert res.rewards == [4.0, 0.5, 5.0, 0.5]
    assert set(res.failures) == set(FAILURE_KINDS) and res.n_failed == 0


def test_config_functions_override_task_defaults_and_take_kwargs():
    cfg = RewardConfig(backend="inline", functions=[
        {"fn": f"{FAULTS}:good", "weight": 2.0, "name": "len"},
        {"fn": "reward_faults:scaled", "kwargs": {"scale": 10.0}},
    ])
    with RewardEngine(cfg, [(length_reward, 1.0)]) as eng:
        assert eng.names == ["len", "scaled"]
        res = eng.score(["p"], ["abc"])
    assert res.rewards == [36.0] and res.n_failed == 0


def test_per_sample_and_batched_give_the_same_values():
    cfg = RewardConfig(backend="inline", batch_size=3)
    with RewardEngine(cfg, [f"{FAULTS}:good", f"{FAULTS}:good_batched"]) as eng:
        assert [f.batched for f in eng.functions] == [False, True]
        res = eng.score(["p"] * 7, [str(10 ** i) for i in range(7)])
    assert res.per_function["good"] == res.per_function["good_batched"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_columns_only_go_to_functions_that_take_them():
    seen = []

    def strict(prompt, completion):  # no **kwargs: must not receive the 'answer' column
        seen.append(completion)
        return 1.0

    with RewardEngine(RewardConfig(backend="inline"), [(strict, 1.0), (answer_reward, 1.0)]) as eng:
        res = eng.score(["p", "q"], ["x", "y"], {"answer": ["x", "z"]})
    assert res.rewards == [2.0, 1.0] and seen == ["x", "y"]


def test_cache_hits_skip_calls_but_not_failures():
    calls = []

    def counted(prompt, completion, answer=None):
        calls.append(completion)
        return None if completion == "none" else 1.0

    with RewardEngine(RewardConfig(backend="inline", cache=True), [(counted, 1.0)]) as eng:
        first = eng.score(["p", "p", "p"], ["a", "b", "none"], {"answer": [1, 2, 3]})
        second = eng.score(["p", "p", "p", "p"], ["a", "b", "none", "a"], {"answer": [1, 2, 3, 9]})
    assert first.cache_hits == 0 and second.cache_hits == 2
    assert calls == ["a", "b", "none", "none", "a"]  # failures are re-evaluated; other answer = other key
    assert second.rewards == [1.0, 1.0, None, 1.0] and second.failures["none"] == 1  # None: no reward, dropped


def test_drop_policy():
    def flaky(prompt, completion):
        if completion == "boom":
            raise ValueError("boom")
        return 1.0

    cfg = RewardConfig(backend="inline", on_error="drop")
    with RewardEngine(cfg, [(flaky, 1.0), (length_reward, 1.0)]) as eng:
        res = eng.score(["p", "p"], ["ok", "boom"])
    assert res.rewards == [3.0, None]
    assert res.per_function["flaky"] == [1.0, None] and res.per_function["length_reward"] == [2.0, 4.0]
    assert res.failures["error"] == 1 and eng.totals["error"] == 1
    assert "flaky: error: ValueError: boom" in res.errors[0]


def test_totals_accumulate_and_summary():
    with RewardEngine(RewardConfig(backend="inline"), [f"{FAULTS}:return_nan"]) as eng:
        eng.score(["p"] * 3, ["a"] * 3)
        eng.score(["p"] * 2, ["a"] * 2)
        assert eng.totals["nan"] == 5 and eng.evaluations == 5
        assert "nan=5" in eng.summary()


def test_spec_errors_are_early_and_clear():
    with pytest.raises(RewardSpecError, match="'missing_dir/r.py:f': file not found"):
        RewardEngine(RewardConfig(functions=["missing_dir/r.py:f"]))
    with pytest.raises(RewardSpecError, match="no reward functions"):
        RewardEngine(RewardConfig())
    with pytest.raises(RewardSpecError, match="picklable"):
        RewardEngine(RewardConfig(backend="process"), [(lambda p, c: 1.0, 1.0)])


def test_bad_inputs_raise_value_error():
    with RewardEngine(RewardConfig(backend="inline"), [length_reward]) as eng:
        with pytest.raises(ValueError, match="2 prompts but 1 completions"):
            eng.score(["a", "b"], ["x"])
        with pytest.raises(ValueError, match="column 'answer' has 1 values"):
            eng.score(["a", "b"], ["x", "y"], {"answer": [1]})
        assert eng.score([], []).rewards == []
    with pytest.raises(RewardBackendError, match="closed"):
        eng.score(["a"], ["b"])


# ----------------------------------------------------------------------------- process


def test_process_pool_values_order_reuse_and_close():
    before = set(descendants())
    cfg = RewardConfig(backend="process", workers=2, batch_size=7, timeout=5)
    n = 100
    prompts = [f"p{i}" for i in range(n)]
    completions = ["x" * (i % 13) for i in range(n)]
    eng = RewardEngine(cfg, [(reward_faults.good, 1.0), (f"{FAULTS}:good_batched", 0.5)])
    res = eng.score(prompts, completions)
    assert res.rewards == [1.5 * (i % 13) for i in range(n)] and res.n_failed == 0
    pids = eng.backend.worker_pids()
    assert len(pids) == 2
    assert eng.score(prompts[:3], completions[:3]).rewards == [0.0, 1.5, 3.0]
    assert eng.backend.worker_pids() == pids  # reused
    eng.close()
    eng.close()  # idempotent
    assert leftovers(before) == []


def test_process_dead_idle_worker_is_replaced_transparently():
    with RewardEngine(RewardConfig(backend="process", workers=1, timeout=5), [f"{FAULTS}:good"]) as eng:
        assert eng.score(["p"], ["ab"]).rewards == [2.0]
        (pid,) = eng.backend.worker_pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        res = eng.score(["p", "p"], ["abc", "a"])
        assert res.rewards == [3.0, 1.0] and res.n_failed == 0
        assert eng.backend.worker_pids() != [pid]


def test_process_timeout_is_per_call_not_per_chunk():
    # 4 samples x 0.4 s in one chunk of a per-sample function: no call exceeds 0.7 s.
    cfg = RewardConfig(backend="process", workers=1, batch_size=4, timeout=0.7)
    with RewardEngine(cfg, [f"{FAULTS}:faulty_slow"]) as eng:
        eng.start()
        res = eng.score(["p"] * 4, ["a", "bb", "ccc", "dddd"], {"delay": [0.4] * 4})
    assert res.n_failed == 0 and res.rewards == [1.0, 2.0, 3.0, 4.0]


def test_process_timeout_kills_the_rewards_own_subprocesses(tmp_path):
    before = set(descendants())
    cfg = RewardConfig(backend="process", workers=1, timeout=1.0)
    pid_file = tmp_path / "child.pid"
    with RewardEngine(cfg, [f"{FAULTS}:child_then_hang"]) as eng:
        res = eng.score(["p"], ["c"], {"pid_file": [str(pid_file)]})
        assert res.failures["timeout"] == 1
        child = int(pid_file.read_text())
        deadline = time.monotonic() + 3
        while alive(child):
            assert time.monotonic() < deadline, "the reward's subprocess outlived the timeout"
            time.sleep(0.05)
    assert leftovers(before) == []


# ----------------------------------------------------------------------------- None (issue 9, item 13)

HOSTILE = str(Path(__file__).with_name("reward_hostile.py"))


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_none_from_the_only_function_drops_the_sample(backend):
    """TRL's convention: None is "no reward for this sample", left out of the update (not a 0)."""
    cfg = RewardConfig(backend=backend, workers=1)
    with RewardEngine(cfg, [f"{HOSTILE}:none_unless_long"]) as eng:
        res = eng.score(["p"] * 3, ["ab", "abc", "abcd"])
    assert res.rewards == [None, 3.0, 4.0]
    assert res.per_function == {"none_unless_long": [None, 3.0, 4.0]}
    assert res.failures["none"] == 1 and res.failed_samples == 0  # counted, but not a malfunction


def test_none_adds_nothing_among_several_functions_and_drops_when_all_are_none():
    def half(prompt, completion):
        return None if completion == "x" else 10.0

    with RewardEngine(RewardConfig(backend="inline"), [(f"{HOSTILE}:none_unless_long", 2.0), (half, 0.5)]) as eng:
        res = eng.score(["p"] * 4, ["abc", "ab", "x", "xyz1"])
    # abc: 2*3 + 0.5*10; ab: only half counts; x: both None -> dropped; xyz1: 2*4 + 5
    assert res.rewards == [11.0, 5.0, None, 13.0]
    assert res.per_function == {"none_unless_long": [3.0, None, None, 4.0], "half": [10.0, 10.0, None, 10.0]}


def test_none_in_a_batched_result_and_explicit_on_none():
    def batched(prompts, completions):
        return [None if c == "-" else 1.0 for c in completions]

    with RewardEngine(RewardConfig(backend="inline"), [batched]) as eng:
        assert eng.score(["p"] * 3, ["a", "-", "b"]).rewards == [1.0, None, 1.0]
    with RewardEngine(RewardConfig(backend="inline", on_none=0.0), [batched]) as eng:  # the old behaviour
        assert eng.score(["p"] * 3, ["a", "-", "b"]).rewards == [1.0, 0.0, 1.0]
    with RewardEngine(RewardConfig(backend="inline", on_none="drop"), [batched, length_reward]) as eng:
        assert eng.score(["p"] * 2, ["a", "-"]).rewards == [2.0, None]  # drop: even with another function


# ----------------------------------------------------------------------------- max_failure_fraction (item 10)


def _scored(kinds_per_sample, **cfg):
    """An engine result where sample i fails with kinds_per_sample[i] (None: ok) from function 'f'."""
    from progrl.rewards.engine import RewardFailureError  # noqa: F401 - the class under test

    def f(prompt, completion):
        if completion == "error":
            raise TypeError("f() missing 1 required positional argument: 'answer'")
        if completion == "nan":
            return float("nan")
        if completion == "none":
            return None
        return 1.0

    eng = RewardEngine(RewardConfig(backend="inline", **cfg), [f])
    return eng, eng.score(["p"] * len(kinds_per_sample), [k or "ok" for k in kinds_per_sample])


def test_a_step_that_fails_entirely_for_one_reason_stops():
    from progrl.rewards.engine import RewardFailureError

    eng, res = _scored(["error"] * 16)
    with pytest.raises(RewardFailureError) as info:
        eng.check_failures(res)
    assert str(info.value) == ("reward error: f: error: TypeError: f() missing 1 required positional argument: "
                               "'answer' (16 of 16 samples failed; set reward.max_failure_fraction to change this)")


@pytest.mark.parametrize("kinds, cfg", [
    (["error"] * 15 + [None], {}),  # one sample worked
    (["error"] * 8 + ["nan"] * 8, {}),  # two reasons
    (["none"] * 16, {}),  # None is an answer, not a failure
    (["error"] * 16, {"max_failure_fraction": "never"}),
    (["error"] * 7 + [None] * 9, {"max_failure_fraction": 0.5}),
])
def test_steps_that_do_not_stop(kinds, cfg):
    eng, res = _scored(kinds, **cfg)
    eng.check_failures(res)


def test_max_failure_fraction_below_one():
    from progrl.rewards.engine import RewardFailureError

    eng, res = _scored(["error"] * 8 + [None] * 8, max_failure_fraction=0.5)
    with pytest.raises(RewardFailureError, match=r"\(8 of 16 samples failed"):
        eng.check_failures(res)
