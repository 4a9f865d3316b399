"""bench/compare_trl: the report renders (goals, floor rows, ceilings) and the floor side runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "bench" / "compare_trl" / "run.py"


def load_run():
    spec = importlib.util.spec_from_file_location("compare_trl_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def side(sps: float, rss: float, reward: float, acc: float) -> dict:
    return {"samples_per_s": sps, "steady_samples_per_s": sps, "peak_rss_mb": rss, "reward_last": reward,
            "reward_last_se": 0.01, "loop_s": 10.0, "eval": {"accuracy": acc, "mean_reward": 0.6}}


def fake_report() -> dict:
    versions = {"trl": "x", "transformers": "y", "torch": "z"}
    ppo = {"title": "(b) PPO, 4 epochs", "trl_name": "TRL PPOTrainer 0.11.4", "goal": 5.0, "steps": 3,
           "progrl": side(30.0, 500.0, 0.56, 0.12), "trl": side(20.0, 600.0, 0.56, 0.10),
           "floor": {"float32": {"samples_per_s": 32.0, "steady_samples_per_s": 32.0, "peak_rss_mb": 550.0,
                                 "loop_s": 9.0},
                     "bfloat16": {"samples_per_s": 40.0, "steady_samples_per_s": 40.0, "peak_rss_mb": 520.0,
                                  "loop_s": 7.0}},
           "ratios": {"throughput": 1.5, "throughput_steady": 1.5, "memory": 500 / 600, "reward_diff": 0.0,
                      "reward_diff_se": 0.014, "accuracy_diff": 0.02, "accuracy_diff_se": 0.02,
                      "eval_reward_diff": 0.0}}
    return {"args": {"threads": 1, "repeats": 2, "samples_per_step": 64, "eval_prompts": 512, "last": 10},
            "command": "python bench/compare_trl/run.py", "minutes": 1.0, "load_before": 0.1,
            "machine": "2-core CPU", "versions": {"progrl": {"progrl": "0", **versions}, "venv-trl": versions,
                                                  "venv-trl011": versions},
            "model": {"params": 1, "warm_start_examples": 1, "warm_start_epochs": 1,
                      "eval": {"accuracy": 0.1, "mean_reward": 0.5}},
            "comparisons": [ppo]}


def test_report_renders_goals_floor_rows_and_ceilings(tmp_path, capsys):
    run = load_run()
    (tmp_path / "report.json").write_text(json.dumps(fake_report()))
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    assert run.main(["--from-report", "--out", str(tmp_path), "--markdown", str(doc)]) == 0
    text = doc.read_text()
    assert "## Other\n\nkept" in text  # other sections stay
    assert "model-work floor, float32" in text and "model-work floor, bfloat16" in text
    assert "(goal >= 5x: **not met**)" in text  # 1.5x
    # ceilings are floor / TRL; progrl's place is progrl / float32 floor
    assert "float32 1.60x, bfloat16 2.00x; progrl runs at 0.94x the float32 floor" in text
    assert "Why not 5x on PPO" in text  # the notes are part of the section


def test_report_renders_the_bf16_autocast_row(tmp_path):
    run = load_run()
    report = fake_report()
    report["comparisons"][0]["progrl_bf16"] = side(36.0, 480.0, 0.55, 0.11)
    (tmp_path / "report.json").write_text(json.dumps(report))
    doc = tmp_path / "benchmarks.md"
    assert run.main(["--from-report", "--out", str(tmp_path), "--markdown", str(doc)]) == 0
    text = doc.read_text()
    assert "| progrl, bf16 autocast (`model.precision = \"bf16\"`) | 36.0 |" in text
    # against classic TRL (20/s), the bf16 floor (40/s) and progrl in float32 (30/s)
    assert "progrl under bf16 autocast: 1.80x classic TRL (fp32), 0.90x the bfloat16 floor (1.20x progrl in float32)" in text


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_floor_side_runs_the_ppo_passes(tmp_path, dtype):
    from progrl import modeling
    from progrl.tasks import get_task

    task = get_task("arithmetic")
    tok = modeling.prepare_tokenizer(task.build_tokenizer())
    lm = modeling.build_causal_lm_from_config("gpt2", len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=64,
                                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                              pad_token_id=tok.pad_token_id, seed=0)
    lm.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    run = load_run()
    records = [[{"prompt": r["prompt"]} for r in task.train_records(8, 0, step)] for step in (1, 2)]
    plan = {"threads": 1, "seed": 0, "hparams": {**run.PPO_HPARAMS, "mini_batch_size": 4}, "samples_per_step": 8,
            "steps": 2, "records": records, "model_dir": str(tmp_path / "model"), "dtype": dtype}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, str(RUN_PY.parent / "floor_side.py"), str(tmp_path / "plan.json"),
                           str(tmp_path / "result.json")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["samples"] == 16 and result["dtype"] == dtype
    assert len(result["step_ends"]) == 2 and result["samples_per_s"] > 0


def load_tta():
    path = RUN_PY.parent / "time_to_accuracy.py"
    spec = importlib.util.spec_from_file_location("compare_trl_tta", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_to_accuracy_goal_and_report(tmp_path):
    tta = load_tta()
    curve = lambda pts: [{"t": t, "step": 0, "accuracy": a, "mean_reward": 0.5} for t, a in pts]  # noqa: E731
    sides = [
        {"side": "progrl", "tag": "progrl", "label": "progrl default", "settings": "defaults", "samples": 1000,
         "samples_per_s": 100.0, "loop_s": 10.0, "curve": curve([(0, 0.25), (30, 0.4), (60, 0.6), (90, 0.7)])},
        {"side": "trl", "tag": "trl-grpo-0", "label": "TRL GRPO #0", "settings": "lr", "samples": 900,
         "samples_per_s": 90.0, "loop_s": 10.0, "curve": curve([(0, 0.25), (100, 0.35), (300, 0.5), (500, 0.5)])},
        {"side": "trl", "tag": "trl-ppo", "label": "TRL PPO", "settings": "-", "samples": 500,
         "samples_per_s": 50.0, "loop_s": 10.0, "curve": curve([(0, 0.25), (200, 0.45)])},
    ]
    g = tta.goal(sides)
    # best TRL accuracy 0.5, first reached at 300 s; progrl first reaches it at 60 s: 0.2x < 1/3
    assert g["target"] == 0.5 and g["t_trl"] == 300 and g["t_progrl"] == 60 and g["met"]
    assert tta.time_to(sides[2]["curve"], 0.5) is None
    report = {"args": {"minutes": 10, "threads": 2, "eval_prompts": 512}, "command": "python x", "machine": "cpu",
              "load_before": 0.1, "load_after": 0.2, "start": {"accuracy": 0.25, "mean_reward": 0.7},
              "sides": sides, "goal": g}
    text = tta.markdown(report)
    # accuracy at 60 s is the last snapshot at or before 60 s; best 70% at 90 s
    assert "| progrl default | defaults | 100 | 1,000 | 60.0% | 70.0% | 70.0% |" in text and "70.0% (90) |" in text
    assert "**met**" in text and "0.20x the TRL time" in text
