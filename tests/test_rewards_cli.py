"""``progrl score`` (progrl/rewards/cli.py)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from progrl.rewards.cli import add_score_parser, main, run_score

FAULTS = str(Path(__file__).with_name("reward_faults.py"))
ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "samples.jsonl", [
        {"prompt": "p", "completion": "abc", "fault": "ok"},
        {"prompt": "p", "completion": "ab", "fault": "nan"},
        {"prompt": "p", "completion": "abcd", "fault": "ok"},
    ])


def test_json_last_line(data, capsys):
    code = main(["--reward", f"{FAULTS}:faulty", "--reward", f"{FAULTS}:good", "--weight", "1", "--weight", "0.5",
                 "--data", str(data), "--backend", "inline", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    payload = json.loads(out[-1])
    assert payload["rewards"] == [4.5, 1.0, 6.0]
    assert payload["failures"]["nan"] == 1 and sum(payload["failures"].values()) == 1
    assert len(payload["failures"]) == 8


def test_table_output_via_subparsers(data, capsys):
    parser = argparse.ArgumentParser(prog="progrl")
    add_score_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["score", "--reward", f"{FAULTS}:faulty", "--data", str(data), "--backend", "inline"])
    assert run_score(args) == 0
    out = capsys.readouterr().out
    assert "0\t3" in out and "1\t0" in out and "failures: nan=1" in out and "3 records" in out


def test_process_backend_from_the_command_line(tmp_path):
    records = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "p", "completion": "abc", "fault": "ok"},
        {"prompt": "p", "completion": "abcd", "fault": "sleep"},
        {"prompt": "p", "completion": "ab", "fault": "segfault"},
    ])
    proc = subprocess.run(
        [sys.executable, "-m", "progrl.rewards.cli", "--reward", f"{FAULTS}:faulty", "--data", str(records),
         "--timeout", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert payload["rewards"] == [3.0, 0.01, 0.01]
    assert payload["failures"]["timeout"] == 1 and payload["failures"]["crash"] == 1


@pytest.mark.parametrize("case, fragment", [
    ("missing_file", "cannot read data file"),
    ("bad_json", "line 2: invalid JSON"),
    ("no_completion", "line 1: 'completion' is missing"),
    ("not_object", "line 1: expected a JSON object"),
    ("empty", "has no records"),
    ("bad_spec", "has no attribute 'no_such_fn'"),
    ("bad_module", "no module named 'no_such_pkg_q'"),
    ("bad_weights", "2 --weight values for 1 --reward"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case, fragment):
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "p", "completion": "c"}])
    files = {
        "missing_file": tmp_path / "nope.jsonl",
        "bad_json": write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "completion": "c"}, "{oops"]),
        "no_completion": write_jsonl(tmp_path / "n.jsonl", [{"prompt": "p"}]),
        "not_object": write_jsonl(tmp_path / "o.jsonl", [[1, 2]]),
        "empty": write_jsonl(tmp_path / "e.jsonl", []),
    }
    reward = {"bad_spec": f"{FAULTS}:no_such_fn", "bad_module": "no_such_pkg_q.mod:f"}.get(case, f"{FAULTS}:good")
    argv = ["--reward", reward, "--data", str(files.get(case, good)), "--backend", "inline"]
    if case == "bad_weights":
        argv += ["--weight", "1", "--weight", "2"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and lines[0].startswith("progrl score: error:")
    assert "Traceback" not in captured.err and captured.out == ""


def test_bad_spec_from_the_command_line_has_no_traceback(data):
    proc = subprocess.run([sys.executable, "-m", "progrl.rewards.cli", "--reward", "missing.py:f", "--data", str(data)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "progrl score: error: reward function 'missing.py:f': file not found: " \
                                  f"{ROOT / 'missing.py'}"


def test_streamed_output_equals_scoring_the_whole_file_at_once(tmp_path, capsys, monkeypatch):
    """Chunks of 7 records: same table and same JSON line as one engine call over all records."""
    from progrl.rewards import RewardConfig, RewardEngine
    from progrl.rewards import cli

    faults = ["ok", "nan", "ok", "none", "raise", "ok", "string"]
    records = [{"prompt": f"p{i}", "completion": "x" * (i % 11), "fault": faults[i % 7]} for i in range(100)]
    for i in range(90, 100):  # a column that only the last records have: None for the others, in every chunk
        records[i]["scale"] = 0.5
    data = write_jsonl(tmp_path / "many.jsonl", records)
    specs = [f"{FAULTS}:faulty", f"{FAULTS}:scaled"]
    argv = ["--reward", specs[0], "--reward", specs[1], "--weight", "1", "--weight", "2", "--data", str(data),
            "--backend", "inline"]

    monkeypatch.setattr(cli, "CHUNK", 7)
    assert main(argv + ["--json"]) == 0
    streamed_json = capsys.readouterr().out
    assert main(argv) == 0
    streamed_table = capsys.readouterr().out

    prompts, completions, columns = cli.read_jsonl(str(data))
    assert columns["scale"] == [None] * 90 + [0.5] * 10
    cfg = RewardConfig(functions=[{"fn": specs[0], "weight": 1}, {"fn": specs[1], "weight": 2}], backend="inline")
    with RewardEngine(cfg) as eng:
        whole = eng.score(prompts, completions, columns)
    assert streamed_json == json.dumps({"rewards": whole.rewards, "failures": whole.failures}) + "\n"
    lines = streamed_table.splitlines()
    assert lines[0] == "#\treward\tfaulty\tscaled" and len(lines) == 1 + 100 + 2 + len(whole.errors)
    for i in range(100):
        cells = lines[1 + i].split("\t")
        assert int(cells[0]) == i
        assert cells[1] == ("dropped" if whole.rewards[i] is None else f"{whole.rewards[i]:.6g}")
    assert lines[101].startswith("100 records") and whole.failures["error"] == 90 + sum(i % 7 == 4 for i in range(100))


def test_bad_line_late_in_the_file_is_reported_before_any_output(tmp_path, capsys):
    records = [{"prompt": "p", "completion": "c"}] * 50 + ["{oops"]
    data = write_jsonl(tmp_path / "late.jsonl", records)
    assert main(["--reward", f"{FAULTS}:good", "--data", str(data), "--backend", "inline"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "line 51: invalid JSON" in captured.err
