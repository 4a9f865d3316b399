"""End-to-end runs of a tiny arithmetic model: learning, resume, run files, eval."""

import json
import math

import pytest

from progrl.cli import main
from progrl.tracking import read_jsonl

TINY = [
    "--set", "model.n_layer=1", "--set", "model.n_embd=32", "--set", "model.n_head=2",
    "--set", "sft.examples=16", "--set", "sft.epochs=2",
    "--set", "rollout.batch_size=16", "--set", "algo.minibatch_size=8", "--set", "algo.epochs=2",
    "--set", "eval.n_prompts=32", "--set", "log.progress=false", "--set", "log.checkpoint_every=2",
    "--set", "algo.lr=1e-3", "--set", "algo.lr_schedule=linear", "--set", "algo.kl_coef=0.05",
    "--set", "algo.batch_entropy_coef=0.1",
]
TIMING = {"samples_per_s", "tokens_per_s", "time_generation", "time_reward", "time_update"}


def train_rows(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in read_jsonl(run_dir / "metrics.jsonl") if r["phase"] == "train"]


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["train", "arithmetic", "--steps", "4", "--out", str(full), *TINY]) == 0

    from progrl.trainer import Trainer

    original = Trainer.rl_step

    def interrupted(self, step):
        if step == 4:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(Trainer, "rl_step", interrupted)
    assert main(["train", "arithmetic", "--steps", "4", "--out", str(cut), *TINY]) == 130
    assert [r["step"] for r in train_rows(cut)] == [1, 2, 3]  # step 3 ran but its checkpoint did not
    monkeypatch.setattr(Trainer, "rl_step", original)
    assert main(["train", "arithmetic", "--resume", str(cut)]) == 0

    a, b = train_rows(full), train_rows(cut)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for k in ra:
            va, vb = ra[k], rb[k]
            assert (va == vb) or (isinstance(va, float) and math.isnan(va) and math.isnan(vb)), (ra["step"], k, va, vb)
    # the final held-out evaluation agrees too
    ev_a = [r for r in read_jsonl(full / "metrics.jsonl") if r["phase"] == "eval"][-1]
    ev_b = [r for r in read_jsonl(cut / "metrics.jsonl") if r["phase"] == "eval"][-1]
    assert ev_a["accuracy"] == ev_b["accuracy"] and ev_a["mean_reward"] == ev_b["mean_reward"]


def test_run_directory_contents_and_eval_command(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "arithmetic", "--steps", "2", "--out", str(run), *TINY]) == 0
    for name in ("config.toml", "metrics.jsonl", "samples.jsonl", "plot.png", "final/config.json",
                 "checkpoints/latest"):
        assert (run / name).exists(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    row = train_rows(run)[0]
    for key in ("reward_mean", "reward_std", "reward_min", "reward_max", "kl", "entropy", "batch_entropy",
                "max_batch_prob", "clipfrac", "approx_kl", "vf_loss", "explained_variance", "grad_norm",
                "kl_coef", "fail_timeout"):
        assert key in row, key
    samples = read_jsonl(run / "samples.jsonl")
    assert samples and {"prompt", "completion", "reward"} <= set(samples[0])
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads(last)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["mean_reward"] <= 1.0
    final_eval = [r for r in read_jsonl(run / "metrics.jsonl") if r["phase"] == "eval"][-1]
    assert metrics["accuracy"] == pytest.approx(final_eval["accuracy"])
