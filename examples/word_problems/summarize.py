"""Print a run's held-out accuracy curve, training reward and time per step (for docs/results.md).

    python examples/word_problems/summarize.py runs/word-problems
"""

from __future__ import annotations

import sys
from pathlib import Path

from progrl.tracking import read_jsonl


def main(run_dir: str) -> None:
    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    train = [r for r in rows if r["phase"] == "train"]
    evals = [r for r in rows if r["phase"] == "eval"]
    key = "rewards/correct/mean"
    print("held-out accuracy by step:", ", ".join(f"{r['step']}: {r[key]:.2f}" for r in evals if key in r))
    print("held-out truncated fraction:", ", ".join(f"{r['step']}: {r['truncated_fraction']:.2f}" for r in evals))
    print("training reward per step:", ", ".join(f"{r['reward_mean']:.2f}" for r in train))
    secs = [r["time_generation"] + r["time_reward"] + r["time_update"] for r in train]
    if secs:
        gen = sum(r["time_generation"] for r in train) / len(train)
        upd = sum(r["time_update"] for r in train) / len(train)
        print(f"seconds per step: mean {sum(secs) / len(secs):.1f} (generation {gen:.1f}, update {upd:.1f}), "
              f"min {min(secs):.1f}, max {max(secs):.1f}, over {len(secs)} steps")


if __name__ == "__main__":
    main(sys.argv[1])
