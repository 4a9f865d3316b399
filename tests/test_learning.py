"""A tiny model must actually learn: held-out mean reward rises by a clear margin."""

from progrl.cli import main
from progrl.tracking import read_jsonl


def test_tiny_model_reward_rises(tmp_path):
    run = tmp_path / "run"
    code = main([
        "train", "arithmetic", "--steps", "200", "--seed", "0", "--out", str(run),
        "--set", "model.n_layer=1", "--set", "model.n_embd=64", "--set", "model.n_head=2",
        "--set", "sft.examples=0",  # start from a random model: all improvement comes from RL
        "--set", "rollout.batch_size=64", "--set", "algo.minibatch_size=64", "--set", "algo.epochs=2",
        "--set", "algo.lr=1e-3", "--set", "task_options.reward_scale=10.0",
        "--set", "eval.n_prompts=128", "--set", "eval.every=0",
        "--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "log.plot=false",
        "--set", "log.checkpoint_every=0",
    ])
    assert code == 0
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["phase"] == "eval"]
    before, after = evals[0]["mean_reward"], evals[-1]["mean_reward"]
    train = [r["reward_mean"] for r in read_jsonl(run / "metrics.jsonl") if r["phase"] == "train"]
    assert after >= before + 0.2, (before, after)
    assert sum(train[-10:]) / 10 >= sum(train[:10]) / 10 + 0.1, train
