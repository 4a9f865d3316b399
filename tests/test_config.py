"""Config layering and errors: one clear line naming the field, exit code 2."""

import pytest

from progrl.cli import main
from progrl.config import ConfigError, apply_override, build_config, parse_value


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, field", [
    (["--set", "algo.lr=abc"], "algo.lr"),
    (["--set", "algo.bogus=1"], "algo.bogus"),
    (["--set", "rollout.temperature=-1"], "rollout.temperature"),
    (["--set", "algo.estimator=ppo2"], "algo.estimator"),
    (["--set", "task_options.max_chars=x"], "task_options.max_chars"),
    (["--set", "task_options.nope=1"], "task_options.nope"),
    (["--set", "nonsense"], "nonsense"),
])
def test_bad_values_give_one_line_naming_the_field(capsys, tmp_path, argv, field):
    code, out, err = run_cli(capsys, "train", "arithmetic", "--out", str(tmp_path / "run"), *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert field in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing started


def test_bad_config_files(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[algo]\nlr = 1e-3\nclip = 0.2\n")
    code, _, err = run_cli(capsys, "train", "arithmetic", "--config", str(bad))
    assert code == 2 and "algo.clip" in err and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("[algo\nlr = 1")
    code, _, err = run_cli(capsys, "train", "arithmetic", "--config", str(broken))
    assert code == 2 and "not valid TOML" in err
    code, _, err = run_cli(capsys, "train", "arithmetic", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml" in err
    code, _, err = run_cli(capsys, "train", "no-such-task")
    assert code == 2 and "no-such-task" in err
    code, _, err = run_cli(capsys, "eval", str(tmp_path))
    assert code == 2 and "not a run directory" in err


def test_layering_order():
    cfg = build_config({"algo": {"lr": 1.0, "epochs": 2}}, {"algo": {"lr": 2.0}}, ["algo.lr=3.0"], {"seed": 7})
    assert cfg.algo.lr == 3.0 and cfg.algo.epochs == 2 and cfg.seed == 7
    assert cfg.rollout.batch_size == 128  # field default


def test_parse_value_and_override():
    assert parse_value("3") == 3 and parse_value("1e-3") == 1e-3 and parse_value("true") is True
    assert parse_value('["a", "b"]') == ["a", "b"] and parse_value("gae") == "gae"
    assert apply_override({"a": {"b": 1, "c": 2}}, "a.b=5") == {"a": {"b": 5, "c": 2}}
    with pytest.raises(ConfigError):
        apply_override({}, "a.=1")


def test_paper_config_file_is_valid():
    from pathlib import Path

    from progrl.config import read_toml

    for path in Path(__file__).parents[1].joinpath("configs").glob("*.toml"):
        data = read_toml(path)
        cfg = build_config({}, data)
        assert cfg.task == data["task"]


def test_whiten_default_is_the_estimators_own_and_task_defaults_keep_their_measured_setting():
    """Issue 9 item 14: unset means the estimator's definition (progrl.advantages.default_whiten)."""
    from progrl.config import AlgoConfig
    from progrl.tasks import get_task

    assert AlgoConfig().whiten_advantages is None
    assert build_config(get_task("arithmetic").defaults()).algo.whiten_advantages is False
    sentiment = get_task("sentiment").defaults()
    assert sentiment["algo"]["estimator"] == "rloo" and sentiment["algo"]["whiten_advantages"] is True
    assert build_config({}, {}, ["algo.estimator=\"grpo\""]).algo.whiten_advantages is None
