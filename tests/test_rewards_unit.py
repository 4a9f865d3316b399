"""Pure parts of the reward engine: classification, failure policy, specs, config, cache."""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from pathlib import Path

import pytest

from progrl.rewards import FAILURE_KINDS, RewardConfig, RewardSpecError
from progrl.rewards.cache import RewardCache, sample_keys
from progrl.rewards.failures import (
    Outcome,
    classify_batch,
    classify_exception,
    classify_value,
    empty_counts,
    format_failures,
)
from progrl.rewards.policy import apply_policy, combine, count_failures
from progrl.rewards.spec import accepted_keywords, detect_batched, resolve, split_spec

FAULTS = str(Path(__file__).with_name("reward_faults.py"))


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize("value, expected", [
    (0.5, 0.5), (3, 3.0), (-2, -2.0), (Fraction(1, 4), 0.25), (0.0, 0.0),
])
def test_numbers_are_values(value, expected):
    assert classify_value(value) == Outcome(expected, None, None)


@pytest.mark.parametrize("value, kind", [
    (math.nan, "nan"), (math.inf, "inf"), (-math.inf, "inf"), (10 ** 400, "inf"),
    (None, "none"), ("0.5", "type"), (True, "type"), (False, "type"), ([1.0], "type"),
    ({"r": 1}, "type"), (1 + 2j, "type"), (b"1", "type"),
])
def test_failures_are_classified(value, kind):
    out = classify_value(value)
    assert out.value is None and out.kind == kind and out.message


def test_numpy_scalars_and_0d_arrays():
    np = pytest.importorskip("numpy")
    assert classify_value(np.float32(0.25)).value == 0.25
    assert classify_value(np.int64(7)).value == 7.0
    assert classify_value(np.array(1.5)).value == 1.5
    assert classify_value(np.float64("nan")).kind == "nan"
    assert classify_value(np.bool_(True)).kind == "type"
    assert classify_value(np.array([1.0, 2.0])).kind == "type"


def test_classify_batch():
    assert [o.value for o in classify_batch([1, 2.5, 3], 3)] == [1.0, 2.5, 3.0]
    assert [o.kind for o in classify_batch((1.0, None, math.nan), 3)] == [None, "none", "nan"]
    assert {o.kind for o in classify_batch([1.0, 2.0], 3)} == {"length"}
    assert len(classify_batch([1.0, 2.0], 3)) == 3
    assert {o.kind for o in classify_batch(None, 2)} == {"type"}
    assert {o.kind for o in classify_batch(1.0, 2)} == {"type"}
    assert {o.kind for o in classify_batch("ab", 2)} == {"type"}


def test_classify_batch_accepts_arrays():
    np = pytest.importorskip("numpy")
    assert [o.value for o in classify_batch(np.array([0.5, 1.0]), 2)] == [0.5, 1.0]


def test_classify_exception():
    out = classify_exception(ValueError("bad"))
    assert out.kind == "error" and "ValueError: bad" in out.message
    assert classify_exception(MemoryError()).kind == "crash"
    assert len(classify_exception(RuntimeError("x" * 10_000)).message) <= 500


def test_counts_and_format():
    counts = empty_counts()
    assert tuple(counts) == FAILURE_KINDS and set(counts.values()) == {0}
    count_failures([Outcome(1.0), Outcome(None, "nan", "m"), Outcome(None, "nan", "m")], counts)
    assert counts["nan"] == 2
    assert format_failures(counts) == "nan=2"
    assert format_failures(empty_counts()) == "no failures"


# ----------------------------------------------------------------------------- policy


def test_apply_policy():
    policy = RewardConfig(on_timeout="drop").failure_policy()
    assert apply_policy(Outcome(0.7), policy) == 0.7
    assert apply_policy(Outcome(None, "timeout", "t"), policy) is None
    assert apply_policy(Outcome(None, "error", "e"), policy) == 0.01
    assert apply_policy(Outcome(None, "nan", "n"), policy) == 0.0


def test_combine_weights_and_drop():
    assert combine([[1.0, 2.0], [10.0, None]], [0.5, 2.0]) == [20.5, None]
    assert combine([[1.0, 2.0]], [3.0]) == [3.0, 6.0]


def test_combine_skip_adds_nothing_and_all_skipped_is_dropped():
    from progrl.rewards.policy import SKIP

    assert combine([[1.0, SKIP, SKIP], [10.0, 10.0, SKIP]], [0.5, 2.0]) == [20.5, 20.0, None]
    assert combine([[SKIP, 1.0]], [3.0]) == [None, 3.0]  # one function: None -> no reward
    assert combine([[SKIP], [None]], [1.0, 1.0]) == [None]
    assert RewardConfig().failure_policy()["none"] == "skip"
    with pytest.raises(ValueError):
        combine([[1.0]], [1.0, 2.0])


def test_default_failure_values_follow_the_paper():
    policy = RewardConfig().failure_policy()
    assert set(policy) == set(FAILURE_KINDS)
    assert policy["timeout"] == policy["error"] == policy["crash"] == 0.01
    assert policy["nan"] == 0.0


# ----------------------------------------------------------------------------- config


def test_config_validation():
    cfg = RewardConfig(functions=["a.py:f", {"fn": "m:g", "weight": 0.5}], on_nan="drop")
    assert [f.fn for f in cfg.functions] == ["a.py:f", "m:g"] and cfg.functions[1].weight == 0.5
    assert cfg.backend == "process" and cfg.failure_policy()["nan"] is None
    for bad in ({"timeout": 0}, {"workers": 0}, {"batch_size": 0}, {"on_error": "ignore"},
                {"on_nan": math.nan}, {"backend": "threads"}, {"unknown": 1},
                {"functions": [{"fn": "a.py:f", "weight": math.inf}]}, {"functions": [{"fn": "a:f", "x": 1}]},
                {"max_failure_fraction": 0}, {"max_failure_fraction": 1.5}, {"sandbox": True, "backend": "ray"},
                {"load_timeout": 0}):
        with pytest.raises(ValueError):
            RewardConfig(**bad)


# ----------------------------------------------------------------------------- specs


def test_split_spec():
    assert split_spec("dir/file.py:fn") == ("dir/file.py", "fn")
    assert split_spec("pkg.mod:fn") == ("pkg.mod", "fn")
    assert split_spec("pkg.mod.fn") == ("pkg.mod", "fn")
    for bad in ("fn", "file.py", ":fn", "mod:"):
        with pytest.raises(RewardSpecError, match="expected"):
            split_spec(bad)


def _per_sample(prompt, completion, answer=None):
    return 1.0


def _trl_style(completions, **kwargs):
    return [1.0] * len(completions)


def _batched(prompts, completions, answer):
    return [1.0] * len(prompts)


def test_detect_batched():
    assert detect_batched(_trl_style) and detect_batched(_batched)
    assert not detect_batched(_per_sample)
    assert detect_batched(_per_sample, override=True)
    assert detect_batched(functools.partial(_batched, answer=None))

    def marked(p, c):
        return 0.0

    marked.progrl_batched = True
    assert detect_batched(marked)


def test_accepted_keywords():
    assert accepted_keywords(_trl_style) is None
    assert accepted_keywords(_per_sample) == {"prompt", "completion", "answer"}


def test_resolve_file_and_module():
    assert resolve(f"{FAULTS}:good")("p", "abc") == 3.0
    assert resolve("math:sqrt")(4) == 2.0
    assert resolve("os.path.join")("a", "b") == "a/b"


@pytest.mark.parametrize("spec, fragment", [
    ("tests/no_such_file.py:f", "file not found"),
    ("no_such_package_xyz.mod:f", "no module named 'no_such_package_xyz'"),
    (f"{FAULTS}:no_such_function", "has no attribute 'no_such_function'"),
    (f"{FAULTS}:BEHAVIOURS", "not a function"),
    ("math:pi", "not a function"),
])
def test_resolve_errors_name_the_spec(spec, fragment):
    with pytest.raises(RewardSpecError) as info:
        resolve(spec)
    assert spec in str(info.value) and fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_resolve_file_that_fails_to_import(tmp_path):
    bad = tmp_path / "broken_reward.py"
    bad.write_text("import no_such_module_abc\n\ndef f(p, c):\n    return 1.0\n")
    with pytest.raises(RewardSpecError, match="importing .*broken_reward.py failed: ModuleNotFoundError"):
        resolve(f"{bad}:f")


# ----------------------------------------------------------------------------- cache


def test_cache_lru_and_keys():
    cache = RewardCache(2)
    cache.put("a", 1.0)
    cache.put("b", 2.0)
    assert cache.get("a") == 1.0  # a is now the most recent
    cache.put("c", 3.0)
    assert cache.get("b") is None and cache.get("a") == 1.0 and len(cache) == 2
    keys = sample_keys(["p", "p"], ["c", "c"], {"answer": [1, 2], "meta": [{"x": [1]}, {"x": [1]}]})
    assert keys[0] != keys[1] and None not in keys
    unhashable = sample_keys(["p"], ["c"], {"obj": [object.__new__(type("U", (), {"__hash__": None}))]})
    assert unhashable == [None]
    assert sample_keys([[{"role": "user"}]], ["c"], {}) == [None]


# ----------------------------------------------------------------------------- attribution (process backend)


def test_describe_exit():
    from progrl.rewards.process_pool import describe_exit

    assert describe_exit(-11) == "worker died from SIGSEGV"
    assert "out of memory?" in describe_exit(-9)
    assert describe_exit(3) == "worker exited with code 3"


def test_failure_attribution():
    from collections import deque

    from progrl.rewards.jobs import Job
    from progrl.rewards.process_pool import ProcessBackend

    backend = ProcessBackend([], [False, True], workers=1, timeout=1, batch_size=4)  # starts nothing
    job = Job(0, [10, 11, 12], ["a", "b", "c"], ["x", "y", "z"], {"k": [1, 2, 3]})
    bad = Outcome(None, "timeout", "t")
    queue, results = deque(), {}
    backend._fail(job, 1, bad, queue, results)  # per-sample: only sample 11 fails, the rest runs again
    assert results == {(0, 11): bad}
    (rest,) = queue
    assert rest.positions == [10, 12] and rest.prompts == ["a", "c"] and rest.columns == {"k": [1, 3]}
    queue, results = deque(), {}
    backend._fail(Job(1, [5, 6], ["a", "b"], ["x", "y"], {}), 0, bad, queue, results)  # batched: the whole call
    assert results == {(1, 5): bad, (1, 6): bad} and not queue
    backend.close()


def test_benchmark_writes_only_its_own_section(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "reward_engine.py"
    spec = importlib.util.spec_from_file_location("bench_reward_engine", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Training\nkeep me\n\n## Reward engine\nold numbers\n\n## Other\nkeep too\n")
    bench.write_section(doc, "## Reward engine\n\nnew numbers\n")
    text = doc.read_text()
    assert "old numbers" not in text and "new numbers" in text
    assert "## Training\nkeep me" in text and "## Other\nkeep too" in text
    assert text.index("## Training") < text.index("## Reward engine") < text.index("## Other")
    fresh = tmp_path / "new.md"
    bench.write_section(fresh, "## Reward engine\n\nx\n")
    assert fresh.read_text().startswith("# Benchmarks\n\n## Reward engine")
