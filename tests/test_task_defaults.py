"""A built-in task's default job must never do worse than its start.

The arithmetic tasks' defaults are run as `progrl train TASK` would run them (every setting the
task's default, only the step count shortened and the held-out set smaller) from the default
warm start, and the held-out reward must not fall and the policy must not dissolve into noise.
The first `arithmetic-chain` default failed this within 6 RL steps (held-out reward 0.285 ->
4e-22, token entropy -> log of the vocabulary size: uniform noise), so a dozen steps catch it.
The sentiment task needs a 135M-parameter pretrained model and is checked in its own tests.
"""

from __future__ import annotations

import math

import pytest

from progrl.cli import main
from progrl.tasks import arithmetic_core as core
from progrl.tracking import read_jsonl

# one torch thread: as fast as two for this small model, and immune to oversubscribed cores
QUIET = ["--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "log.plot=false",
         "--set", "log.checkpoint_every=0", "--set", "threads=1"]
# The one-token default (lr 1e-3) dips for its first ~20 steps (held-out reward 0.738 -> 0.637 at
# step 12, measured) and is above its start well before step 100 in every measured run, so it is
# judged after 100 steps (~50 s); the chain's old default was already noise by step 12.
# The chain default (step-level RAFT, 128 prompts x 4, forks 32 ways from its failures) is judged
# after 40 steps (~2.5 minutes on a quiet 2-core CPU; 60 steps took 4), where it must also have
# learned. Its trajectory differs from machine to machine (the warm start's last digits differ with
# the CPU and the transformers version); measured with 256 held-out prompts (sixth session,
# transformers 5.25), every 10 steps: every-step-right chains 7.8, 8.2, 9.8, 15.2, 18.0% (step 40),
# paper reward 0.282, 0.348, 0.386, 0.415, 0.455 (26.2% / 0.544 at step 60). The previous default
# (32 x 16, 8-way forks) measured 6.3% -> 18.8% / 0.261 -> 0.467 at step 60 on the fifth session's
# machine; without the forks the gain at 50 steps was within the noise of 256 greedy answers.
STEPS = {"arithmetic": 100, "arithmetic-chain": 40}


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory):
    """The default warm start (`progrl sft arithmetic`: both arithmetic tasks share it)."""
    out = tmp_path_factory.mktemp("warm") / "sft"
    assert main(["sft", "arithmetic", "--seed", "0", "--out", str(out), *QUIET]) == 0
    return out / "final"


@pytest.mark.parametrize("task", sorted(STEPS))
def test_default_job_does_not_fall_below_its_warm_start(task, warm_start, tmp_path):
    run = tmp_path / "run"
    assert main(["train", task, "--seed", "0", "--steps", str(STEPS[task]), "--model", str(warm_start),
                 "--out", str(run), "--set", "sft.examples=0", "--set", "eval.n_prompts=256", *QUIET]) == 0
    rows = read_jsonl(run / "metrics.jsonl")
    evals = [r for r in rows if r["phase"] == "eval"]
    train = [r for r in rows if r["phase"] == "train"]
    before, after = evals[0], evals[-1]
    assert after["mean_reward"] >= before["mean_reward"] - 0.03, (before, after)
    assert after["accuracy"] >= before["accuracy"] - 0.03, (before, after)
    # no collapse to noise: the sampled tokens stay far from uniform over the vocabulary (the old
    # chain default was at 0.87 x log V by step 12; a healthy one-token run stays below 0.5 x)
    uniform = math.log(len(core.build_tokenizer()))
    entropy = [r["entropy"] for r in train if "entropy" in r]
    assert max(entropy[-3:]) < 0.6 * uniform, entropy
    assert after["distinct_answers"] > 1  # and not one answer for every prompt
    if task == "arithmetic-chain":  # learned: more chains with every step right
        assert after["chain_exact"] >= before["chain_exact"] + 0.04, (before, after)
        assert after["mean_reward"] >= before["mean_reward"] + 0.06, (before, after)
