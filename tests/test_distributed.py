"""Two processes compute what one process computes on the whole batch.

Each test starts ``torchrun --standalone --nproc_per_node 2 -m progrl train ...`` (gloo on
CPU; FSDP through ``accelerate launch --config_file configs/accelerate/fsdp.yaml``) and the
same run in one process, with the same seed and global batch, and compares every logged
metric and the final weights.

Tolerances (float32 on CPU). The processes run the same passes on half the rows, so matrix
products are blocked differently and results differ by float rounding (~1e-7 relative),
which a few Adam steps amplify where a gradient is near zero (Adam normalises it):
metrics agree to ``1e-4`` relative + ``1e-5`` absolute, weights to ``5e-5`` absolute (an
Adam step here is ``lr = 1e-3``, so a real difference in any gradient would show at ~1e-3).
``explained_variance`` is a ratio of two near-zero variances on minibatches of 4 one-token
answers and agrees to 1e-2 relative only; exact values (samples, greedy answers, counts of
dropped samples and failures) must be equal.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from progrl.cli import main
from progrl.tracking import read_jsonl

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "sft.examples=16", "sft.epochs=2",
    "eval.n_prompts=8", "log.progress=false", "log.tensorboard=false", "log.plot=false",
    "log.checkpoint_every=2", "algo.lr=1e-3", "algo.epochs=2", "threads=1",
    "algo.raft.coef=0", "algo.raft.replay=0",  # the task default's RAFT term runs in one process only
]
PPO = ["algo.estimator=\"gae\"", "algo.whiten_advantages=true", "algo.batch_entropy_coef=0.1",
       "algo.entropy_coef=0.01", "algo.kl_coef=0.05", "algo.kl_controller=\"adaptive\"", "algo.kl_target=0.01",
       "algo.kl_horizon=100", "rollout.batch_size=8", "algo.minibatch_size=4"]
GRPO = ["algo.estimator=\"grpo\"", "rollout.num_generations=4", "rollout.batch_size=4", "algo.minibatch_size=8",
        "algo.loss_agg=\"seq_mean_token_mean\"", "algo.kl_coef=0.05", "algo.kl_in=\"loss\"",
        "algo.kl_estimator=\"k3\"", "algo.batch_entropy_coef=0.1"]
REINFORCE_PP = ["algo.estimator=\"reinforce_pp\"", "rollout.batch_size=8", "algo.minibatch_size=4",
                "algo.kl_coef=0.05", "algo.batch_entropy_coef=0.1"]
TIMING = {"samples_per_s", "tokens_per_s", "time_generation", "time_reward", "time_update"}
LOOSE = {"explained_variance": 1e-2}


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def launch(launcher: list[str], args: list[str], timeout: float = 600) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, "-m", "progrl", "train", "arithmetic", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def one_process(out: Path, overrides: list[str], steps: int) -> None:
    assert main(["train", "arithmetic", "--steps", str(steps), "--out", str(out), *sets(overrides)]) == 0


def close(a, b, rel: float = 1e-4) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-5)
    return a == b


def assert_same_run(one: Path, two: Path, steps: int) -> None:
    rows1, rows2 = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    train1 = [r for r in rows1 if r["phase"] == "train"]
    train2 = [r for r in rows2 if r["phase"] == "train"]
    assert [r["step"] for r in train1] == [r["step"] for r in train2] == list(range(1, steps + 1))
    for r1, r2 in zip(train1, train2):
        assert set(r1) == set(r2)
        for k in r1:
            if k not in TIMING:
                assert close(r1[k], r2[k], LOOSE.get(k, 1e-4)), (r1["step"], k, r1[k], r2[k])
    evals = [({r["step"]: r for r in rows if r["phase"] == "eval"}) for rows in (rows1, rows2)]
    for step in (0, steps):  # before and after RL (a resumed run also has the eval where it stopped)
        e1, e2 = evals[0][step], evals[1][step]
        assert e1["accuracy"] == e2["accuracy"] and e1["distinct_answers"] == e2["distinct_answers"]
        assert close(e1["mean_reward"], e2["mean_reward"])
    s1, s2 = read_jsonl(one / "samples.jsonl"), read_jsonl(two / "samples.jsonl")
    key = [(s["step"], s["prompt"], s["completion"]) for s in s1]
    assert key == [(s["step"], s["prompt"], s["completion"]) for s in s2 if s["step"] <= steps][:len(key)]
    from safetensors.torch import load_file

    w1, w2 = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    assert set(w1) == set(w2)
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert worst < 5e-5, worst


def test_ppo_two_processes_equal_one_process_and_resume(tmp_path):
    """PPO with whitening, batch entropy, token entropy and the adaptive KL controller; the
    two-process run stops after step 2 and is resumed, with two processes, to step 3."""
    one, two = tmp_path / "one", tmp_path / "two"
    overrides = [*TINY, *PPO]
    one_process(one, overrides, steps=3)
    launch([*torchrun(), "--standalone", "--nproc_per_node", "2"],
           ["--steps", "2", "--out", str(two), *sets(overrides)])
    assert (two / "checkpoints" / "step-000002" / "state.json").exists()
    launch([*torchrun(), "--standalone", "--nproc_per_node", "2"], ["--steps", "3", "--resume", str(two)])
    assert_same_run(one, two, steps=3)
    kl = [r["kl_coef"] for r in read_jsonl(two / "metrics.jsonl") if r["phase"] == "train"]
    assert kl[0] != kl[-1]  # the adaptive controller moved, on the global KL measurement


def test_lora_two_processes_equal_one_process(tmp_path):
    """LoRA under DDP: only the adapter trains, the KL reference is the model with its adapter
    disabled (no copy), on two processes as on one."""
    one, two = tmp_path / "one", tmp_path / "two"
    overrides = [*TINY, *PPO, "model.lora=true", "model.lora_r=4"]
    one_process(one, overrides, steps=2)
    launch([*torchrun(), "--standalone", "--nproc_per_node", "2"],
           ["--steps", "2", "--out", str(two), *sets(overrides)])
    assert (two / "final" / "adapter").is_dir()
    assert_same_run(one, two, steps=2)


@pytest.fixture()
def ray_address():
    """A local Ray head for this test (the processes of the run connect to it as drivers)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance of another test is running in this process")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def test_grpo_groups_two_processes_with_rewards_on_ray(tmp_path, ray_address):
    """GRPO, 4 samples per prompt, 2 prompts per process (groups whole on one process); the two
    processes score their samples on a Ray cluster, the single process inline."""
    one, two = tmp_path / "one", tmp_path / "two"
    one_process(one, [*TINY, *GRPO], steps=2)
    # an actor imports torch and progrl: on a loaded 2-core machine that can take more than the 10 s call timeout
    ray = ["reward.backend=\"ray\"", "reward.workers=1", f"reward.ray_address=\"{ray_address}\"",
           "reward.load_timeout=120"]
    launch([*torchrun(), "--standalone", "--nproc_per_node", "2"],
           ["--steps", "2", "--out", str(two), *sets([*TINY, *GRPO, *ray])])
    assert_same_run(one, two, steps=2)


@pytest.mark.parametrize("lora", [[], ["model.lora=true", "model.lora_r=4"]], ids=["full", "lora"])
def test_fsdp_two_processes_equal_one_process(tmp_path, lora):
    """FSDP2 through ``accelerate launch`` with the shipped config, on CPU (gloo), REINFORCE++
    (whose normalisation is over the whole batch), KL and batch entropy; with LoRA the
    reference is the sharded model with its adapter disabled."""
    from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2 in this torch)

    one, two = tmp_path / "one", tmp_path / "two"
    overrides = [*TINY, *REINFORCE_PP, *lora]
    one_process(one, overrides, steps=2)
    exe = Path(sys.executable).with_name("accelerate")
    accelerate = [str(exe)] if exe.exists() else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
    launch([*accelerate, "launch", "--config_file", str(REPO / "configs" / "accelerate" / "fsdp.yaml"),
            "--num_processes", "2"], ["--steps", "2", "--out", str(two), *sets(overrides)])
    assert "fsdp" in (two / "checkpoints" / "step-000002" / "state.json").read_text()
    assert_same_run(one, two, steps=2)


def test_launcher_errors_are_one_line(tmp_path):
    """A batch that does not split over the processes stops both, with one line from the main one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "progrl", "train",
                           "arithmetic", "--steps", "1", "--out", str(tmp_path / "r"),
                           *sets([*TINY, "rollout.batch_size=3"])], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("config error")]
    assert lines == ["config error: rollout.batch_size: 3 prompts per step do not split over 2 processes (each "
                     "samples whole groups of one prompt); use a multiple of 2"]
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())

