"""Retrying failed prompts: the queue's rules, and the trainer asking failed prompts again."""

from __future__ import annotations

import pytest

from progrl.config import ConfigError, build_config
from progrl.prompt_replay import RetryConfig, RetryQueue
from progrl.tasks import get_task
from progrl.tracking import read_jsonl
from progrl.trainer import Trainer


def test_queue_keeps_failures_up_to_the_attempt_limit_and_takes_a_fraction():
    q = RetryQueue(RetryConfig(fraction=0.5, below=1.0, attempts=2, capacity=3))
    recs = [{"prompt": p} for p in "abcd"]
    q.report(recs, [0, 0, 2, 1], [0.2, 1.0, 0.1, None])  # a fails; b solved; c out of attempts; d all dropped
    assert [x["record"]["prompt"] for x in q.items] == ["a"]
    taken, tries = q.take(8)
    assert [r["prompt"] for r in taken] == ["a"] and tries == [1] and len(q) == 0
    q.report([{"prompt": p} for p in "efgh"], [0, 0, 0, 0], [0.0] * 4)  # capacity 3: e leaves first
    assert [x["record"]["prompt"] for x in q.items] == ["f", "g", "h"]
    taken, _ = q.take(4)  # at most fraction x batch = 2
    assert [r["prompt"] for r in taken] == ["f", "g"]
    other = RetryQueue(RetryConfig(fraction=0.5))
    other.load_state_dict(q.state_dict())
    assert list(other.items) == list(q.items)
    off = RetryQueue(RetryConfig())
    off.report(recs, [0] * 4, [0.0] * 4)
    assert len(off) == 0 and off.take(8) == ([], [])


TINY = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "sft.examples=0",
        "rollout.batch_size=8", "algo.minibatch_size=8", "algo.epochs=1", "eval.n_prompts=8",
        "log.progress=false", "log.tensorboard=false", "log.plot=false", "log.checkpoint_every=0", "threads=1"]


def test_trainer_asks_failed_prompts_again(tmp_path, monkeypatch):
    """An untrained model fails nearly every prompt: the next step starts with half a batch of them."""
    task = get_task("arithmetic")
    cfg = build_config(task.defaults(), {}, [*TINY, "rollout.retry.fraction=0.5", "rollout.retry.attempts=1"],
                       {"steps": 3})
    tr = Trainer(cfg, task, tmp_path / "run")
    seen = []
    orig = tr.generate

    def spy(prompts, *a, **k):
        seen.append(list(prompts))
        return orig(prompts, *a, **k)

    monkeypatch.setattr(tr, "generate", spy)
    tr.train()
    # generate calls: held-out evaluation, steps 1-3, held-out evaluation
    step1, step2 = seen[1], seen[2]
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "train"]
    assert rows[0]["retried"] == 0 and rows[1]["retried"] == 4
    failed1 = [rec for rec in task.train_records(8, 0, 1)]
    assert step1 == [r["prompt"] for r in failed1]
    assert set(step2[:4]) <= set(step1)  # the first half of step 2: step 1's failures, oldest first
    assert step2[4:] == [r["prompt"] for r in task.train_records(4, 0, 2)]  # the rest: step 2's own fresh prompts


def test_retry_config_errors_name_the_field():
    task = get_task("arithmetic")
    with pytest.raises(ConfigError, match=r"rollout\.retry\.fraction"):
        build_config(task.defaults(), {}, ["rollout.retry.fraction=1.5"])
