"""RAFT / expert iteration: the sample filter, the loss, and the estimator in the real trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch

from progrl import expert_iteration as ei
from progrl.config import ConfigError, build_config
from progrl.rollout import forward_response
from progrl.tasks import get_task
from progrl.tracking import read_jsonl
from progrl.trainer import Trainer

NAN = math.nan


def test_select_threshold_drops_nan_and_low():
    scores = torch.tensor([1.0, 0.99, NAN, 1.0, 0.2, 1.5])
    assert ei.select(scores, 1, min_reward=1.0).tolist() == [True, False, False, True, False, True]
    assert ei.select(scores, 1, min_reward=None).tolist() == [True, True, False, True, True, True]


def test_select_top_k_per_group_with_ties_and_threshold():
    # two groups of 3: best-of-3 (ties: the earlier sample), then best-2 with a threshold
    scores = torch.tensor([0.5, 0.9, 0.9, NAN, 0.1, 0.3])
    assert ei.select(scores, 3, min_reward=None, top_k=1).tolist() == [False, True, False, False, False, True]
    assert ei.select(scores, 3, min_reward=None, top_k=2).tolist() == [False, True, True, False, True, True]
    assert ei.select(scores, 3, min_reward=0.2, top_k=2).tolist() == [False, True, True, False, False, True]
    # top_k >= group size ranks nothing away
    assert ei.select(scores, 3, min_reward=None, top_k=3).tolist() == [True, True, True, False, True, True]
    with pytest.raises(ValueError, match="groups of 4"):
        ei.select(scores, 4)


def test_raft_loss_is_token_mean_nll():
    logprobs = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.1), 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = ei.raft_loss(logprobs, mask)
    want = -(math.log(0.5) + math.log(0.25) + math.log(0.1)) / 3
    assert float(loss.detach()) == pytest.approx(want)
    assert float(stats["kept_tokens"]) == 3
    loss.backward()
    assert logprobs.grad.flatten().tolist() == pytest.approx([-1 / 3, -1 / 3, -1 / 3, 0.0])
    empty, _ = ei.raft_loss(logprobs.detach(), torch.zeros_like(mask))
    assert float(empty) == 0.0


TINY = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "sft.examples=16", "sft.epochs=1",
        "rollout.batch_size=8", "rollout.num_generations=2", "algo.minibatch_size=4", "algo.epochs=1",
        "eval.n_prompts=8", "log.progress=false", "log.tensorboard=false", "log.plot=false",
        "log.checkpoint_every=0", "algo.lr=1e-2", "threads=1", "algo.estimator=\"raft\"", "algo.raft.replay=0",
        "algo.raft.coef=0.0"]


def test_importance_weights_and_the_weighted_raft_loss():
    """1 / pi_old of whole responses, capped at max_weight (worked by hand), and the token mean
    weighted by them."""
    old = torch.tensor([[math.log(0.5), 0.0], [math.log(0.05), 0.0], [math.log(0.5), math.log(0.5)],
                        [0.0, 0.0]])
    mask = torch.tensor([[1, 0], [1, 0], [1, 1], [1, 0]])
    w = ei.importance_weights(old, mask, max_weight=10.0)
    assert w.tolist() == pytest.approx([2.0, 10.0, 4.0, 1.0])  # 1/0.05 = 20 is capped; pi_old = 1 gives 1
    current = torch.tensor([[-1.0, 9.0], [-2.0, 9.0], [-1.0, -3.0], [-5.0, 9.0]])
    keep = torch.tensor([1.0, 1.0, 1.0, 0.0])  # the last row was not kept
    loss, _ = ei.raft_loss(current, mask * (keep * w).unsqueeze(-1))
    assert float(loss) == pytest.approx((2 * 1 + 10 * 2 + 4 * (1 + 3)) / (2 + 10 + 4 * 2))  # = 1.9
    rows = ei.kept_rows(torch.tensor([[3], [4], [5], [6]]), torch.ones(4, 1), torch.tensor([[7, 0], [8, 0], [9, 9], [1, 0]]),
                        mask, keep.bool(), keep * w)
    assert rows == [([3], [7], 2.0), ([4], [8], 10.0), ([5], [9, 9], 4.0)]
    assert ei.row_weights(rows + [([1], [2])]).tolist() == [2.0, 10.0, 4.0, 1.0]
    buf = ei.ReplayBuffer(4)
    buf.add(rows)
    other = ei.ReplayBuffer(4)
    other.load_state_dict(json.loads(json.dumps(buf.state_dict())))  # a checkpoint holds it as JSON
    assert list(other.items) == rows


def test_inverse_probability_weighting_reaches_the_replay_and_the_update(tmp_path):
    """With `raft.weight = "inverse_probability"` the stored rows carry 1 / pi_old and the run
    reports the kept samples' mean weight, which is >= 1 and <= the cap."""
    task = get_task("arithmetic")
    base = [kv for kv in TINY if not kv.startswith("algo.estimator")]
    cfg = build_config(task.defaults(), {}, [*base, "algo.raft.min_reward=0.0", "algo.raft.coef=1.0",
                                             "algo.raft.replay=4", 'algo.raft.weight="inverse_probability"',
                                             "algo.raft.max_weight=50"], {"steps": 2})
    tr = Trainer(cfg, task, tmp_path / "run")
    tr.train()
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "train"]
    assert all(1.0 <= r["kept_weight_mean"] <= 50.0 and r["raft_nll"] > 0 for r in rows)
    weights = [row[2] for row in tr.replay.items]
    assert len(weights) == 32 and all(1.0 <= x <= 50.0 for x in weights) and len(set(weights)) > 1


def test_raft_trains_only_on_kept_samples(tmp_path, monkeypatch):
    """The update sees exactly the kept rows and moves their log-likelihood up; no value head."""
    task = get_task("arithmetic")
    # keep everything scoring >= 0.0 but only the best of each pair: half the samples
    cfg = build_config(task.defaults(), {}, [*TINY, "algo.raft.min_reward=0.0", "algo.raft.top_k=1"], {"steps": 1})
    tr = Trainer(cfg, task, tmp_path / "run")
    assert tr.policy.value_head is None
    seen = []
    orig = tr.update

    def spy(rollout, mask, advantages, *rest, **kw):
        keep = advantages.amax(-1) > 0
        seen.append((rollout, keep.clone()))
        with torch.no_grad():
            before = forward_response(tr.policy, rollout.input_ids, rollout.attention_mask,
                                      rollout.prompt_ids.shape[1])[1][:, 0]
        out = orig(rollout, mask, advantages, *rest, **kw)
        with torch.no_grad():
            after = forward_response(tr.policy, rollout.input_ids, rollout.attention_mask,
                                     rollout.prompt_ids.shape[1])[1][:, 0]
        seen.append((before, after))
        return out

    monkeypatch.setattr(tr, "update", spy)
    tr.train()
    (_rollout, keep), (before, after) = seen
    assert keep.view(-1, 2).sum(-1).tolist() == [1] * 8  # best of each group of 2
    assert float(after[keep].mean()) > float(before[keep].mean())  # imitation raises the kept answers
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "train"]
    assert rows[0]["kept_fraction"] == 0.5
    assert "nll" in rows[0] and "vf_loss" not in rows[0]


def test_raft_with_nothing_kept_leaves_the_model_unchanged(tmp_path):
    task = get_task("arithmetic")
    cfg = build_config(task.defaults(), {}, [*TINY, "algo.raft.min_reward=5.0"], {"steps": 2})
    tr = Trainer(cfg, task, tmp_path / "run")
    tr.warm_start()
    start = {k: v.clone() for k, v in tr.policy.state_dict().items()}
    for step in (1, 2):
        metrics, _ = tr.rl_step(step)
        assert metrics["kept_fraction"] == 0.0
    assert all(torch.equal(start[k], v) for k, v in tr.policy.state_dict().items())


def test_raft_config_errors_name_the_field():
    task = get_task("arithmetic")
    with pytest.raises(ConfigError, match=r"algo\.raft\.top_k"):
        build_config(task.defaults(), {}, ["algo.raft.top_k=-1"])
    with pytest.raises(ConfigError, match=r"algo\.raft\.typo: unknown field"):
        build_config(task.defaults(), {}, ["algo.raft.typo=1"])


def test_replay_buffer_roundtrip_fifo_and_padding():
    prompt_ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 0, 4]])
    prompt_mask = (prompt_ids != 0).long()
    response_ids = torch.tensor([[11, 2], [12, 0], [13, 0]])
    response_mask = torch.tensor([[1, 1], [1, 0], [1, 0]])
    rows = ei.kept_rows(prompt_ids, prompt_mask, response_ids, response_mask, torch.tensor([True, False, True]))
    assert rows == [([5, 6], [11, 2]), ([4], [13])]
    buf = ei.ReplayBuffer(capacity=2)
    buf.add(rows)
    buf.add([([1], [2])])  # the oldest row leaves
    assert list(buf.items) == [([4], [13]), ([1], [2])]
    p, pm, r, rm = ei.ReplayBuffer.batch([([5, 6], [11, 2]), ([4], [13])], pad_id=0)
    assert p.tolist() == [[5, 6], [0, 4]] and pm.tolist() == [[1, 1], [0, 1]]
    assert r.tolist() == [[11, 2], [13, 0]] and rm.tolist() == [[1, 1], [1, 0]]
    g = torch.Generator().manual_seed(0)
    drawn = buf.draw(5, g)
    assert len(drawn) == 5 and all(x in buf.items for x in drawn)
    assert ei.ReplayBuffer(3).draw(4) == []
    other = ei.ReplayBuffer(2)
    other.load_state_dict(buf.state_dict())
    assert list(other.items) == list(buf.items)


def test_raft_replay_trains_on_earlier_kept_samples_and_resumes(tmp_path, monkeypatch):
    """With replay the update sees this step's kept rows plus rows kept earlier; a resumed run
    restores the buffer and repeats the uninterrupted run."""
    from progrl.cli import main

    common = [a for kv in TINY + ["algo.raft.min_reward=0.0", "algo.raft.top_k=1", "algo.raft.replay=6",
                                  "log.checkpoint_every=1"] for a in ("--set", kv)]
    full, cut = tmp_path / "full", tmp_path / "cut"
    sizes = []
    original = Trainer.update

    def spy(self, rollout, mask, *rest, **kw):
        sizes.append(int((mask.sum(-1) > 0).sum()))
        return original(self, rollout, mask, *rest, **kw)

    monkeypatch.setattr(Trainer, "update", spy)
    assert main(["train", "arithmetic", "--steps", "3", "--out", str(full), *common]) == 0
    assert sizes == [8, 14, 14]  # 8 kept rows per step (best of each pair), plus 6 replayed from step 2 on
    assert main(["train", "arithmetic", "--steps", "2", "--out", str(cut), *common]) == 0
    assert main(["train", "arithmetic", "--resume", str(cut), "--steps", "3"]) == 0
    rows_full = [r for r in read_jsonl(full / "metrics.jsonl") if r["phase"] == "train"]
    rows_cut = [r for r in read_jsonl(cut / "metrics.jsonl") if r["phase"] == "train"]
    assert [r["nll"] for r in rows_full] == [r["nll"] for r in rows_cut]


def test_imitation_term_beside_ppo_with_replay(tmp_path):
    """`raft.coef` adds the likelihood of kept samples (this step's and replayed ones) to PPO's loss."""
    task = get_task("arithmetic")
    base = [kv for kv in TINY if not kv.startswith("algo.estimator")]
    cfg = build_config(task.defaults(), {}, [*base, "algo.raft.min_reward=0.0", "algo.raft.coef=1.0",
                                             "algo.raft.replay=4"], {"steps": 2})
    tr = Trainer(cfg, task, tmp_path / "run")
    assert tr.policy.value_head is not None  # still PPO with its critic
    tr.train()
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "train"]
    assert all(r["kept_fraction"] == 1.0 and r["raft_nll"] > 0 and "vf_loss" in r for r in rows)
    assert len(tr.replay) == 32  # every sample of both steps was kept and stored


@pytest.mark.parametrize("override, field", [({"algo": {"estimator": "raft"}}, "algo.estimator"),
                                             ({"algo": {"raft": {"coef": 1.0}}}, "algo.raft.coef"),
                                             ({"rollout": {"retry": {"fraction": 0.5}}}, "rollout.retry.fraction")])
def test_raft_and_retry_are_refused_with_several_processes(override, field):
    from progrl.config import ConfigError, TrainConfig
    from progrl.trainer import check_split

    cfg = TrainConfig.model_validate({"rollout": {"batch_size": 8}, "algo": {"minibatch_size": 8}, **override})
    check_split(cfg, 1)  # one process: fine
    with pytest.raises(ConfigError, match=f"^config error: {field}: .*one process"):
        check_split(cfg, 2)


def test_prefix_token_count_and_truncated_rows():
    """Token counts of verified text prefixes (the arithmetic tokenizer, worked by hand) and rows
    cut to them for the replay buffer."""
    from progrl.tasks import arithmetic_core as core

    tok = core.build_tokenizer()
    ids = tok("2+12=15<eos>", add_special_tokens=False)["input_ids"]  # 2 + 12 = 15 <eos>
    assert len(ids) == 6
    assert ei.prefix_token_count(tok, ids, "2+12=") == 4
    assert ei.prefix_token_count(tok, ids, "") == 0
    assert ei.prefix_token_count(tok, ids, "2+12=15") == 5  # not the end of the sequence: stopping is not verified
    stop = tok("2+12=<eos>", add_special_tokens=False)["input_ids"]
    assert ei.prefix_token_count(tok, stop, "2+12=") == 4  # "step=<eos>" imitates "step=" only
    assert ei.prefix_token_count(tok, ids, "2+1") == 0  # "1" is not a token of "12"
    assert ei.prefix_mask(torch.tensor([0, 2, 3]), 3).tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]
    rows = ei.kept_rows(torch.tensor([[5], [6]]), torch.ones(2, 1), torch.tensor([[1, 2, 3], [4, 5, 0]]),
                        torch.tensor([[1, 1, 1], [1, 1, 0]]), torch.tensor([True, True]),
                        lengths=torch.tensor([2, 2]))
    assert rows == [([5], [1, 2]), ([6], [4, 5])]


def test_verified_prefixes_reach_the_imitation_term_and_the_replay(tmp_path, monkeypatch):
    """`raft.prefixes` on the whole-chain task: every failed sample's imitated tokens are exactly the
    tokens of the steps the checker verifies; whole successes keep every token; the replay holds
    the cut rows."""
    from progrl.tasks import arithmetic_core as core

    task = get_task("arithmetic-chain")
    base = [kv for kv in TINY if not kv.startswith(("algo.estimator", "algo.raft", "model.", "sft."))]
    # the task's own model and a short warm start: it writes some right steps and some wrong ones
    cfg = build_config(task.defaults(), {}, [*base, 'algo.estimator="rloo"', "algo.raft.coef=1.0", "algo.raft.replay=4",
                                             "algo.raft.prefixes=true", "algo.raft.branches=0", "sft.examples=256", "sft.epochs=20",
                                             "rollout.batch_size=16", "rollout.temperature=1.5"],
                       {"steps": 1})
    tr = Trainer(cfg, task, tmp_path / "run")
    tr.warm_start()
    seen = {}
    orig = tr.update

    def spy(rollout, mask, advantages, returns, ref, beta, step, imitation_weights=None, replayed=None):
        seen.update(rollout=rollout, weights=imitation_weights.clone())
        return orig(rollout, mask, advantages, returns, ref, beta, step, imitation_weights=imitation_weights,
                    replayed=replayed)

    monkeypatch.setattr(tr, "update", spy)
    metrics, _ = tr.rl_step(1)
    rollout, weights = seen["rollout"], seen["weights"]
    completions = tr.decode(rollout)
    prompts = [r[r.index(core.BOS):] for r in tr.tokenizer.batch_decode(rollout.prompt_ids.tolist())]
    n_partial = 0
    for i, (prompt, text) in enumerate(zip(prompts, completions)):
        prefix = core.verified_chain_prefix(prompt, text)
        imitated = rollout.response_ids[i][weights[i] > 0].tolist()
        assert tr.tokenizer.decode(imitated, skip_special_tokens=True) == prefix
        assert weights[i][weights[i] > 0].eq(1.0).all()
        n_partial += bool(prefix) and core.chain_error(prompt.replace(core.BOS, "") + text) > 0
    assert n_partial > 0, "the test needs failed samples with verified steps"
    assert metrics["imitated_token_fraction"] > 0
    assert len(tr.replay) == int((weights.sum(-1) > 0).sum())
    lengths = sorted(len(row[1]) for row in tr.replay.items)
    assert lengths == sorted(int(x) for x in (weights > 0).sum(-1) if x > 0)


def test_raft_estimator_with_prefixes_trains_on_the_cut_rows(tmp_path, monkeypatch):
    """The whole-chain default's path (estimator raft, prefixes, replay): the update's batch is
    exactly the step's imitated rows, each response cut to its verified start (whole when exact)."""
    from progrl.tasks import arithmetic_core as core

    task = get_task("arithmetic-chain")
    base = [kv for kv in TINY if not kv.startswith(("algo.estimator", "algo.raft", "model.", "sft."))]
    cfg = build_config(task.defaults(), {}, [*base, "algo.raft.replay=4", "sft.examples=256", "sft.epochs=20",
                                             "rollout.batch_size=16", "rollout.temperature=1.5"], {"steps": 1})
    assert cfg.algo.estimator == "raft" and cfg.algo.raft.prefixes
    tr = Trainer(cfg, task, tmp_path / "run")
    tr.warm_start()
    seen = {}
    orig = tr.update

    def spy(rollout, mask, advantages, *rest, **kw):
        seen.update(rollout=rollout, mask=mask.clone())
        return orig(rollout, mask, advantages, *rest, **kw)

    monkeypatch.setattr(tr, "update", spy)
    tr.rl_step(1)
    batch, mask = seen["rollout"], seen["mask"]
    assert len(tr.replay) == batch.response_ids.shape[0] > 0  # nothing replayed yet at step 1
    prompts = [r[r.index(core.BOS):] for r in tr.tokenizer.batch_decode(batch.prompt_ids.tolist())]
    for i, prompt in enumerate(prompts):
        text = tr.tokenizer.decode(batch.response_ids[i][mask[i] > 0].tolist(), skip_special_tokens=True)
        assert text and core.verified_chain_prefix(prompt, text) == text
        assert text.endswith("=") or core.exact_chain(prompt, text)


def test_branches_need_prefixes():
    with pytest.raises(ConfigError, match=r"algo\.raft.*branches.*prefixes"):
        build_config({}, {}, ["algo.raft.branches=4"], {})
    assert build_config({}, {}, ["algo.raft.branches=4", "algo.raft.prefixes=true"], {}).algo.raft.branches == 4


@pytest.mark.parametrize("first", ["sample", "top_k"])
def test_branches_continue_failed_starts_and_join_the_imitation(tmp_path, monkeypatch, first):
    """`raft.branches`: continuations are sampled from the verified starts of this step's failed
    samples; each row they add starts with one of those starts, reaches further than it in verified
    steps (or is exact), is distinct, and is in the update's batch and the replay beside the step's own rows."""
    from progrl.tasks import arithmetic_core as core

    task = get_task("arithmetic-chain")
    base = [kv for kv in TINY if not kv.startswith(("algo.estimator", "algo.raft", "model.", "sft."))]
    cfg = build_config(task.defaults(), {}, [*base, "algo.raft.replay=4", "algo.raft.branches=4",
                                             "algo.raft.branch_starts=12", "algo.raft.branch_temperature=1.5",
                                             f'algo.raft.branch_first="{first}"',
                                             "sft.examples=256", "sft.epochs=20", "rollout.batch_size=16"],
                       {"steps": 1})
    tr = Trainer(cfg, task, tmp_path / "run")
    tr.warm_start()
    seen = {}
    orig_branch, orig_update = tr.branch_rows, tr.update

    def spy_branch(records, rollout, lengths, failed, step):
        rows, stats = orig_branch(records, rollout, lengths, failed, step)
        seen.update(records=records, rollout=rollout, lengths=lengths.clone(), failed=failed.clone(), rows=rows)
        return rows, stats

    def spy_update(rollout, mask, *rest, **kw):
        seen.update(batch=rollout, mask=mask.clone())
        return orig_update(rollout, mask, *rest, **kw)

    import progrl.trainer as trainer_module

    forks = []  # per branch sampling call: (forced first tokens, the policy's top 4 there)
    orig_sample = trainer_module.sample

    def spy_sample(policy, ids, mask, params, **kw):
        if params.max_new_tokens < cfg.rollout.max_new_tokens:  # a branch call (the rollout's uses the whole budget)
            heads, head_mask = ids[::4, :-1], mask[::4, :-1]  # the starts, before their forced tokens
            with torch.no_grad():
                logits = policy(heads, head_mask, logits_to_keep=1)[0][:, -1]
            logits[:, list(tr.sampling.banned_ids)] = -math.inf
            forks.append((ids[:, -1].reshape(-1, 4), logits.topk(4, dim=-1).indices))
        return orig_sample(policy, ids, mask, params, **kw)

    monkeypatch.setattr(tr, "branch_rows", spy_branch)
    monkeypatch.setattr(tr, "update", spy_update)
    monkeypatch.setattr(trainer_module, "sample", spy_sample)
    metrics, _ = tr.rl_step(1)
    if first == "top_k":  # each start's 4 branches begin with its 4 most likely next tokens
        assert forks
        forced, top = torch.cat([f for f, _ in forks]), torch.cat([t for _, t in forks])
        assert torch.equal(forced, top)
    rollout, lengths, failed, rows = seen["rollout"], seen["lengths"], seen["failed"], seen["rows"]
    starts = set()
    for i in torch.nonzero(failed).squeeze(-1).tolist():
        p = rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist()
        starts.add((tuple(p), tuple(rollout.response_ids[i][:int(lengths[i])].tolist())))
    assert 0 < metrics["branch_starts"] <= 12 and metrics["branch_starts"] <= len(starts)
    assert rows and metrics["branch_rows"] == len(rows) == len({(tuple(p), tuple(r)) for p, r in rows})
    for p, r in rows:
        origin = [s for (sp, s) in starts if sp == tuple(p) and tuple(r[:len(s)]) == s]
        assert origin, "a branch row continues a failed sample's verified start"
        prompt = tr.tokenizer.decode(p)
        prompt = prompt[prompt.index(core.BOS):]
        text = tr.tokenizer.decode(r, skip_special_tokens=True)
        assert core.verified_chain_prefix(prompt, text) == text  # every imitated token verified
        assert len(r) > min(len(s) for s in origin)  # further than where it started
    batch_rows = {(tuple(p[m.bool()].tolist()), tuple(x[k > 0].tolist())) for p, m, x, k in
                  zip(seen["batch"].prompt_ids, seen["batch"].prompt_mask, seen["batch"].response_ids, seen["mask"])}
    assert {(tuple(p), tuple(r)) for p, r in rows} <= batch_rows
    assert len(tr.replay) == seen["batch"].response_ids.shape[0]  # the step's rows and the branches, nothing older


def test_first_occurrences_marks_repeats_of_the_imitated_tokens():
    prompts = torch.tensor([[0, 5], [0, 5], [0, 5], [6, 7], [0, 5]])
    pmask = torch.tensor([[0, 1], [0, 1], [0, 1], [1, 1], [0, 1]])
    responses = torch.tensor([[1, 2, 3], [1, 2, 9], [1, 2, 3], [1, 2, 3], [4, 4, 4]])
    # rows 0 and 2 are the same; row 1 imitates only [1, 2], as row 0's first two would (but row 0
    # imitates three); row 3 has another prompt; row 4 imitates nothing
    lengths = torch.tensor([3, 2, 3, 3, 0])
    assert ei.first_occurrences(prompts, pmask, responses, lengths).tolist() == [1, 1, 0, 1, 0]
    assert ei.first_occurrences(prompts, pmask, responses, torch.tensor([2, 2, 3, 3, 1])).tolist() == [1, 0, 1, 1, 1]
