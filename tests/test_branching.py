"""progrl.branching: RAFT's forks from the failures, with the policy, sampler and judge replaced
by stand-ins whose answers are worked out by hand (the trainer's use of it is tested in
tests/test_expert_iteration.py)."""

from __future__ import annotations

import torch

from progrl import branching


def test_failed_starts_are_distinct_verified_starts_with_their_first_sample():
    prompts = [[1, 2], [1, 2], [3], [1, 2]]
    responses = [[5, 6, 7], [5, 6, 9], [4], [5, 8]]
    lengths = torch.tensor([2, 2, 0, 1])
    failed = torch.tensor([True, True, True, False])  # the last one is not a failure
    g = torch.Generator().manual_seed(0)
    starts = branching.failed_starts(prompts, responses, lengths, failed, limit=10, generator=g)
    assert starts == [((1, 2), (5, 6), 0), ((3,), (), 2)]  # samples 0 and 1 share a start
    one = branching.failed_starts(prompts, responses, lengths, failed, limit=1, generator=g)
    assert len(one) == 1 and one[0] in starts


def test_top_k_forks_skip_banned_tokens_row_after_row():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 4.0, 0.0, 1.0]])
    assert branching.top_k_forks(logits, 2, banned_ids=[1]) == [[3], [2], [0], [3]]
    assert logits[0, 1] == 3.0  # the caller's logits are left alone
    assert branching.top_k_forks(logits, 9) == [[1], [3], [2], [0], [0], [1], [3], [2]]  # at most the vocabulary


def _search(starts, judge, *, first="top_k", sampled=((9,), (9,)), max_new_tokens=4, branches=2):
    asked = {}

    def next_token_logits(heads):
        asked["heads"] = heads
        return torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 1.0, 0.0]] * len(heads))  # 7, then 8

    def sample(heads, room):
        asked["sampled"], asked["room"] = heads, room
        return [list(sampled[j % len(sampled)]) for j in range(len(heads))]

    rows, stats = branching.search(starts, branches=branches, branch_first=first, max_new_tokens=max_new_tokens,
                                   stop_ids=[8], banned_ids=[], pad_id=0, device="cpu",
                                   next_token_logits=next_token_logits, sample=sample, judge=judge)
    return rows, stats, asked


def test_search_forks_at_the_failed_step_and_keeps_branches_that_get_further():
    seen = {}

    def judge(origins, whole):
        p_ids, p_mask, r_ids, r_mask = whole
        seen["origins"], seen["responses"] = origins, [r[m.bool()].tolist() for r, m in zip(r_ids, r_mask)]
        return torch.tensor([3, 1])  # the fork 7 verified through its continuation; the fork 8 not past its start

    rows, stats, asked = _search([((1,), (5,), 4)], judge)
    assert asked["heads"] == [[1, 5]]
    assert asked["sampled"] == [[1, 5, 7], [1, 5, 8]] and asked["room"] == 2  # 4 - start 1 - fork 1
    # the fork 8 is a stop token: its branch ends there, the sampled continuation is not appended
    assert seen == {"origins": [4, 4], "responses": [[5, 7, 9], [5, 8]]}
    assert rows == [([1], [5, 7, 9])]
    assert stats == {"branch_starts": 1.0, "branch_fixed_fraction": 1.0, "branch_rows": 1.0}


def test_search_keeps_each_distinct_row_once_and_only_its_verified_tokens():
    def judge(origins, whole):
        return torch.tensor([2, 2, 1, 1])  # both branches of start 0 verified to 2 tokens; start 1 not further

    starts = [((1,), (5,), 0), ((2,), (6,), 3)]
    rows, stats, _ = _search(starts, judge, first="sample", sampled=((7, 9),))
    assert rows == [([1], [5, 7])]  # two equal branches -> one row, cut to its 2 verified tokens
    assert stats == {"branch_starts": 2.0, "branch_fixed_fraction": 0.5, "branch_rows": 1.0}


def test_search_skips_starts_with_no_room_left():
    def judge(origins, whole):
        raise AssertionError("nothing to judge")

    rows, stats, asked = _search([((1,), (5, 6, 7, 8), 0)], judge)
    assert rows == [] and stats == {"branch_starts": 1.0, "branch_fixed_fraction": 0.0}
    assert asked == {}
