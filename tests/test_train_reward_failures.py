"""Training survives a reward function that fails on half of its calls, and says so."""

from pathlib import Path

from progrl.cli import main
from progrl.tracking import read_jsonl

FLAKY = '''
import os, zlib

def score(prompt, completion, **columns):
    h = zlib.crc32((prompt + completion).encode())
    if h % 2 == 0:
        raise RuntimeError("the checker broke")
    if h % 7 == 1:
        os._exit(3)  # the worker dies
    return 0.5 + (h % 3) / 10
'''

TINY = ["--set", "model.n_layer=1", "--set", "model.n_embd=32", "--set", "model.n_head=2",
        "--set", "sft.examples=8", "--set", "sft.epochs=1", "--set", "rollout.batch_size=16",
        "--set", "algo.minibatch_size=8", "--set", "algo.epochs=1", "--set", "eval.n_prompts=16",
        "--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "log.plot=false"]


def test_half_failing_rewards_do_not_stop_training(tmp_path, capsys):
    reward = tmp_path / "flaky.py"
    reward.write_text(FLAKY)
    run = tmp_path / "run"
    code = main(["train", "arithmetic", "--steps", "3", "--out", str(run), *TINY,
                 "--set", f'reward.functions=["{reward}:score"]', "--set", 'reward.backend="process"',
                 "--set", "reward.timeout=5", "--set", "reward.workers=1", "--set", 'reward.on_error="drop"', "--set", 'reward.on_crash="drop"'])
    assert code == 0
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["phase"] == "train"]
    assert len(rows) == 3
    errors = sum(r["fail_error"] for r in rows)
    crashes = sum(r["fail_crash"] for r in rows)
    total = 3 * 16
    assert 0.3 * total <= errors + crashes <= 0.8 * total  # about half of the calls failed
    assert crashes > 0
    assert sum(r["dropped"] for r in rows) == errors + crashes  # "drop": left out of the update
    assert all(r["reward_mean"] is not None and 0.5 <= r["reward_mean"] <= 0.71 for r in rows)
    err = capsys.readouterr().err
    assert "reward failures" in err and "error=" in err


def _train_exits_2_with_one_line(tmp_path, capsys, reward_spec, *extra):
    run = tmp_path / "run"
    code = main(["train", "arithmetic", "--steps", "2", "--out", str(run), *TINY,
                 "--set", f'reward.functions=["{reward_spec}"]', *extra])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("reward error: ")]
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


def test_a_reward_missing_a_column_stops_the_run(tmp_path, capsys):
    """Every sample fails for one reason (a column the task does not have): stop, naming the first failure."""
    hostile = Path(__file__).with_name("reward_hostile.py")
    line = _train_exits_2_with_one_line(tmp_path, capsys, f"{hostile}:needs_solution")
    assert line == ("reward error: needs_solution: error: TypeError: needs_solution() missing 1 required positional "
                    "argument: 'solution' (16 of 16 samples failed; set reward.max_failure_fraction to change this)")


def test_a_reward_that_breaks_during_training_stops_the_run(tmp_path, capsys):
    """The held-out evaluation before RL (16 prompts) works, then the first RL step fails as a whole."""
    import reward_hostile

    reward = tmp_path / "breaks.py"
    reward.write_text(reward_hostile.FAILS_AFTER.format(ok_calls=16))
    line = _train_exits_2_with_one_line(tmp_path, capsys, f"{reward}:score")
    assert line.startswith("reward error: score: error: RuntimeError: the checker broke (16 of 16 samples failed")
