"""The JSON-lines worker pool and the engine evaluator, driven by a fake worker (no Java needed):
hang -> timeout and restart, crash -> restart, garbage -> error value and restart, parallel
requests, nothing left running after close; the verdicts, the cache and the reward on top."""

import os
import sys
import time

import pytest

from progrl.ludii.engine import EngineSettings, LudiiEngine
from progrl.ludii.evaluators import EvaluatorSpec, close_all
from progrl.ludii.pool import JsonLinesPool, PoolError
from progrl.ludii.reward import LudiiReward
from progrl.rewards import RewardConfig, RewardEngine
from progrl.rewards.failures import SampleFailure

FAKE = [sys.executable, "-m", "progrl.ludii.fake_worker"]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def eval_request(game: str) -> dict:
    return {"op": "eval", "game": game, "playouts": 10, "max_turns": 50, "budget_s": 1.0, "seed": 0}


@pytest.fixture
def pool(tmp_path):
    p = JsonLinesPool(FAKE, workers=2, timeout=1.5, log_dir=tmp_path / "logs", name="fake worker")
    yield p
    p.close()


def test_parallel_requests_run_on_all_workers(pool, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # each request waits until both have started: they only finish if two workers run them at once
    replies = pool.request_many([eval_request(f"BARRIER:{barrier}:2 a"), eval_request(f"BARRIER:{barrier}:2 b")],
                                timeouts=25.0)
    assert [r.kind for r in replies] == [None, None]
    assert [r.data["verdict"] for r in replies] == ["playable", "playable"]
    assert len(os.listdir(barrier)) == 2  # two different worker processes
    # replies come back in request order, with the pool's ids
    replies = pool.request_many([eval_request(f"game {i}") for i in range(6)])
    assert [r.ok for r in replies] == [True] * 6
    assert len({r.data["id"] for r in replies}) == 6


def test_hang_times_out_and_the_worker_is_replaced(pool):
    pool.wait_ready()
    before = set(pool.pids())
    replies = pool.request_many([eval_request("HANG"), eval_request("fine")])
    assert replies[0].kind == "timeout" and "no reply within 1.5s" in replies[0].message
    assert replies[1].ok
    after = set(pool.pids())
    assert len(before - after) == 1  # the hung worker is gone...
    assert not any(alive(p) for p in before - after)
    assert pool.request(eval_request("again")).ok  # ...and its replacement works
    assert pool.stats["timeout"] == 1 and pool.stats["restarts"] == 1


def test_timeout_kills_what_the_worker_started(pool, tmp_path):
    pid_file = tmp_path / "child.pid"
    reply = pool.request(eval_request(f"SPAWN:{pid_file}"))
    assert reply.kind == "timeout"
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_crash_is_reported_and_the_worker_restarts(pool):
    replies = pool.request_many([eval_request("CRASH"), eval_request("fine")])
    assert replies[0].kind == "crash" and "exited with code 7" in replies[0].message
    assert replies[1].ok
    assert pool.request(eval_request("after the crash")).ok
    assert pool.stats["crash"] == 1


@pytest.mark.parametrize("word, message", [("GARBAGE", "garbage on the fake worker channel"),
                                           ("WRONGID", "garbage on the fake worker channel"),
                                           ("FLOOD", "longer than")])
def test_garbage_on_the_channel_is_an_error_and_a_restart(tmp_path, word, message):
    with JsonLinesPool(FAKE, workers=1, timeout=5, log_dir=tmp_path, name="fake worker", max_line=1 << 20) as p:
        p.wait_ready()
        [old] = p.pids()
        reply = p.request(eval_request(word))
        assert reply.kind == "error" and message in reply.message
        assert p.pids() != [old] and not alive(old)
        assert p.request(eval_request("fine")).ok


def test_a_second_unsolicited_line_replaces_the_worker(tmp_path):
    with JsonLinesPool(FAKE, workers=1, timeout=5, log_dir=tmp_path) as p:
        p.wait_ready()
        [old] = p.pids()
        assert p.request(eval_request("TWOLINES")).ok  # the answer itself is fine
        time.sleep(0.5)  # the extra line arrives while the worker is idle...
        assert p.request(eval_request("fine")).ok  # ...and is seen before the next request is sent to it
        assert old not in p.pids() and not alive(old)


def test_workers_that_never_start_raise_with_the_reason(tmp_path):
    with JsonLinesPool(FAKE + ["--fail-start"], workers=1, log_dir=tmp_path, name="fake worker") as p:
        with pytest.raises(PoolError, match="failed to start 3 times in a row: worker exited with code 5 "
                                            r"\(fake worker: failing on purpose\)"):
            p.request(eval_request("x"))
    with JsonLinesPool(FAKE + ["--bad-ready"], workers=1, log_dir=tmp_path) as p:
        with pytest.raises(PoolError, match="expected a ready line"):
            p.wait_ready()


def test_nothing_left_running_after_close(tmp_path):
    p = JsonLinesPool(FAKE, workers=2, timeout=5, log_dir=tmp_path)
    p.wait_ready()
    pids = p.pids()
    assert len(pids) == 2 and all(alive(x) for x in pids)
    p.close()
    assert not any(alive(x) for x in pids)
    with pytest.raises(PoolError, match="closed"):
        p.request(eval_request("x"))


# ----------------------------------------------------------------------------- the engine on the fake


@pytest.fixture
def engine(tmp_path):
    e = LudiiEngine(None, EngineSettings(workers=2, budget_s=0.5, kill_after_s=1.5), command=FAKE, log_dir=tmp_path)
    yield e
    e.close()


def test_engine_verdicts_and_cache(engine):
    games = ["(game ok)", "(game NOTCOMPILED)", "(game NOTPLAYABLE)", "(game BUDGET)", "(game ENGINEERROR)",
             "(game HANG)", "(game CRASH)", "(game BADSCHEMA)", "(game ONEPLAYER)", "(game ok)"]
    results = engine.evaluate_many(games)
    assert [r.verdict for r in results] == ["playable", "not_compiled", "not_playable", "timeout", "error", "timeout",
                                            "crash", "error", "playable", "playable"]
    assert [r.compiled for r in results[:3]] == [True, False, True]
    assert results[5].compiled is None  # killed: unknown
    assert "balance is not a number in [0, 1]" in results[7].message
    assert results[-1].cached and results[-1].balance == results[0].balance  # the duplicate, evaluated once
    requests = engine.pool.stats["requests"]
    again = engine.evaluate_many(["(game ok)", "(game NOTCOMPILED)", "(game HANG)"])
    assert [r.cached for r in again] == [True, True, False]  # failures are not cached
    assert engine.pool.stats["requests"] == requests + 1


def test_reward_through_the_reward_engine_counts_engine_failures(tmp_path):
    spec = EvaluatorSpec(kind="engine", engine=EngineSettings(workers=2, budget_s=0.5, kill_after_s=1.5),
                         command=tuple(FAKE))
    reward = LudiiReward(spec)
    prompts = ["### PRE: (game x  ### SUF: ) ### MID:"] * 5
    completions = [" (ok))) trailing", " (NOTCOMPILED)", " (NOTPLAYABLE)", " (HANG)", " (unclosed"]
    try:
        direct = reward(prompts, completions)
        assert direct[1] == 0.0 and direct[2] == 0.05 and direct[4] == 0.0  # unclosed: malformed, 0
        assert isinstance(direct[3], SampleFailure) and direct[3].kind == "timeout"
        assert 0.0 <= direct[0] <= 1.0
        with RewardEngine(RewardConfig(backend="inline"), default_functions=[(reward, 1.0)]) as rewards:
            res = rewards.score(prompts, completions)
        assert res.failures["timeout"] == 1 and sum(res.failures.values()) == 1
        assert res.rewards[3] == pytest.approx(0.01)  # the paper's value for a timeout
        assert res.rewards[:3] == [direct[0], 0.0, 0.05]
    finally:
        close_all()


def test_engine_reward_named_by_spec_string():
    cfg = RewardConfig(functions=[{"fn": "progrl.ludii.reward:engine_reward",
                                   "kwargs": {"command": FAKE, "budget_s": 0.5, "kill_after_s": 2.0}}],
                       backend="inline")
    prompt = "### PRE: (game x  ### SUF: ) ### MID:"
    try:
        with RewardEngine(cfg) as rewards:
            res = rewards.score([prompt] * 3, [" (NOTPLAYABLE) junk", " (HANG)", " (unclosed"])
        assert res.rewards == [0.05, 0.01, 0.0] and res.failures["timeout"] == 1
        # the validator needs no worker at all
        from progrl.ludii.reward import engine_reward

        assert engine_reward([prompt], [" (players 2)"], evaluator="validator")[0] == pytest.approx((0.2 + 0.15) / 0.9)  # parses, players; the name is no string
    finally:
        close_all()
