"""progrl's group advantages with dropped samples against TRL's own code, side by side.

    python -m venv /tmp/trl && /tmp/trl/bin/pip download --no-deps trl==1.16.0 -d /tmp/trl-wheel
    (cd /tmp/trl-wheel && unzip -q trl-1.16.0-py3-none-any.whl)
    PYTHONPATH=/tmp/trl-wheel python bench/compare_trl/advantages_oracle.py

TRL computes advantages inline in ``GRPOTrainer._generate_and_score_completions`` and
``RLOOTrainer._generate_and_score_completions``; this script cuts those blocks out of the
installed TRL source (from the ``unscorable_mask`` line to the ``nan_to_num`` line) and runs
them on rewards where ``None`` (every reward function declined, TRL's "unscorable") marks a
dropped sample, next to :func:`progrl.advantages.group_baseline` with the same ``valid`` mask.
It prints both and exits non-zero when they differ by more than 1e-5. The expected values
are also in tests/test_advantages.py (worked out by hand), so the test suite needs no TRL.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
import types

import torch

from progrl.advantages import group_baseline

CASES = {  # name: (rewards with None for dropped, group size)
    "k=3 of G=4": ([1.0, 2.0, 4.0, None], 4),
    "k=2 of G=4": ([None, 3.0, None, 1.0], 4),
    "k=1 of G=4": ([None, None, 5.0, None], 4),
    "k=0 of G=4": ([None, None, None, None], 4),
    "k=4 of G=4": ([0.5, 1.5, -1.0, 2.0], 4),
    "two groups": ([1.0, None, 3.0, 0.0, 2.0, 2.0, None, 7.0], 4),
}


def trl_block(module, cls_name: str) -> str:
    """The advantage block of TRL's ``_generate_and_score_completions``, dedented."""
    src = inspect.getsource(getattr(module, cls_name)._generate_and_score_completions)
    lines = src.splitlines()
    start = next(i for i, line in enumerate(lines) if "unscorable_mask = " in line)
    end = next(i for i, line in enumerate(lines) if "advantages = torch.nan_to_num" in line and i > start)
    return textwrap.dedent("\n".join(lines[start:end + 1]))


def run_trl(block: str, rewards: list, G: int, **attrs) -> torch.Tensor:
    from trl.trainer.utils import nanstd

    per_func = torch.tensor([[float("nan") if r is None else r] for r in rewards])
    me = types.SimpleNamespace(reward_weights=torch.ones(1), **attrs)
    ns = {"torch": torch, "nanstd": nanstd, "self": me, "rewards_per_func": per_func,
          "num_generations": G, "device": "cpu", "gather": lambda x: x}
    exec(block, ns)  # TRL's own code (a trusted, pinned package), not model output
    return ns["advantages"]


def main() -> int:
    from trl.trainer import grpo_trainer, rloo_trainer

    import trl

    grpo_block, rloo_block = trl_block(grpo_trainer, "GRPOTrainer"), trl_block(rloo_trainer, "RLOOTrainer")
    trl_sides = {
        "grpo": (grpo_block, {"multi_objective_aggregation": "sum_then_normalize", "scale_rewards": "group"}),
        "dr_grpo": (grpo_block, {"multi_objective_aggregation": "sum_then_normalize", "scale_rewards": "none"}),
        "rloo": (rloo_block, {"reward_clip_range": None, "beta": 0.0, "normalize_advantages": False}),
    }
    print(f"TRL {trl.__version__}")
    worst = 0.0
    for name, (rewards, G) in CASES.items():
        valid = torch.tensor([r is not None for r in rewards])
        returns = torch.tensor([0.0 if r is None else r for r in rewards])
        for est, (block, attrs) in trl_sides.items():
            ours = group_baseline(returns, G, est, valid=valid)
            theirs = run_trl(block, rewards, G, **attrs)
            diff = float((ours - theirs).abs().max())
            worst = max(worst, diff)
            print(f"{name:12s} {est:8s} progrl {[round(x, 6) for x in ours.tolist()]}\n"
                  f"{'':12s} {'':8s} TRL    {[round(x, 6) for x in theirs.tolist()]}  max diff {diff:.1e}")
    print(f"largest difference: {worst:.2e}")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
