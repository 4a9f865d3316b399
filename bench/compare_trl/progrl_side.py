"""progrl's side of the comparison: GRPO or PPO on the arithmetic task, one subprocess.

    python bench/compare_trl/progrl_side.py PLAN.json RESULT.json

The plan (written by run.py) names the initial model folder, the algorithm, the step count
and the hyperparameters shared with the TRL side. The RL loop is progrl's own
``Trainer.rl_step`` (rollout, programmed reward, advantages, update) plus its metrics log;
the held-out evaluation before/after RL is left out so that both sides time only training.
``"precision": "bf16"`` in the plan runs progrl with ``model.precision = "bf16"`` (autocast over
float32 master weights; the old log-probs and values are re-scored by the update's pass).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Clock, Snapshots, peak_rss_mb, read_json, set_threads, write_result  # noqa: E402


def overrides(plan: dict) -> dict:
    """The progrl config equivalent to the plan's shared hyperparameters."""
    h = plan["hparams"]
    common = {
        "seed": plan["seed"], "steps": plan["steps"], "device": "cpu", "threads": plan["threads"],
        "model": {"name": plan["model_dir"], "precision": plan.get("precision", "fp32")},
        "sft": {"examples": 0},
        "rollout": {"max_new_tokens": 1, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
        "log": {"progress": False, "tensorboard": False, "plot": False, "checkpoint_every": 0},
    }
    if plan["algo"] == "grpo":
        algo = {"estimator": "grpo", "epochs": 1, "minibatch_size": plan["samples_per_step"],
                "lr": h["lr"], "clip_range": h["clip_range"], "max_grad_norm": h["max_grad_norm"],
                "whiten_advantages": False, "loss_agg": "token_mean", "kl_coef": h["beta"],
                "kl_estimator": "k3", "kl_in": "loss"}
        rollout = {"batch_size": plan["samples_per_step"] // h["num_generations"],
                   "num_generations": h["num_generations"]}
    else:
        algo = {"estimator": "gae", "epochs": h["ppo_epochs"], "minibatch_size": h["mini_batch_size"],
                "lr": h["lr"], "clip_range": h["clip_range"], "clip_range_value": h["clip_range_value"],
                "vf_coef": h["vf_coef"], "gamma": h["gamma"], "lam": h["lam"], "max_grad_norm": h["max_grad_norm"],
                "whiten_advantages": True, "loss_agg": "token_mean", "kl_coef": h["init_kl_coef"],
                "kl_controller": "adaptive" if h["adap_kl_ctrl"] else "fixed", "kl_target": h["target"],
                "kl_horizon": h["horizon"], "kl_estimator": "k1", "kl_in": "reward"}
        rollout = {"batch_size": plan["samples_per_step"], "num_generations": 1}
    # the task default's own extras (batch entropy, RAFT's imitation term) are not part of the matched algorithm
    algo.update(entropy_coef=0.0, batch_entropy_coef=0.0, raft={"coef": 0.0, "replay": 0})
    common["algo"] = algo
    common["rollout"] = {**common["rollout"], **rollout}
    return common


def default_overrides(plan: dict) -> dict:
    """The task's default job (``progrl train arithmetic``) on the plan's initial model: the
    time-to-accuracy mode's progrl side. ``plan["overrides"]`` (a nested dict) may change it."""
    from progrl.config import deep_merge

    base = {"seed": plan["seed"], "device": "cpu", "threads": plan["threads"], "model": {"name": plan["model_dir"]},
            "sft": {"examples": 0},
            "log": {"progress": False, "tensorboard": False, "plot": False, "checkpoint_every": 0}}
    if plan.get("steps"):
        base["steps"] = plan["steps"]
    return deep_merge(base, plan.get("overrides", {}))


def main(plan_path: str, result_path: str) -> int:
    wall = Clock()
    plan = read_json(plan_path)
    set_threads(plan["threads"])
    from progrl.config import build_config
    from progrl.tasks import get_task
    from progrl.tracking import Tracker
    from progrl.trainer import Trainer

    task = get_task("arithmetic", plan.get("task_options", {}))
    default = plan["algo"] == "default"
    data = default_overrides(plan) if default else overrides(plan)
    cfg = build_config(task.defaults(), data)
    out = Path(plan["out_dir"])
    trainer = Trainer(cfg, task, out)
    r = cfg.rollout
    if not default:
        for step, expected in enumerate(plan["records"], start=1):  # the very prompts the TRL side gets
            got = [rec["prompt"] for rec in task.train_records(r.batch_size, cfg.seed, step)]
            assert got == [rec["prompt"] for rec in expected], f"prompt mismatch at step {step}"
    if cfg.algo.uses_reference:
        trainer.reference = trainer.make_reference()
    out.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(out, tensorboard=False)
    setup_s = wall()

    def save(folder):
        trainer.policy.lm.save_pretrained(folder)
        trainer.tokenizer.save_pretrained(folder)

    loop = Clock()
    snaps = Snapshots(plan)
    rewards, rows, step_ends = [], [], []
    for step in range(1, cfg.steps + 1):
        metrics, shown = trainer.rl_step(step)
        tracker.log(step, metrics)
        rewards.append(metrics["reward_mean"])
        step_ends.append(loop())
        rows.append({k: metrics[k] for k in ("time_generation", "time_reward", "time_update")})
        if snaps.tick(save, step):
            break
    else:
        if snaps.budget is not None:  # the job ended before its time budget: its final model
            snaps.save(save, cfg.steps)
    steps_run = len(step_ends)
    loop_s, loop_cpu_s = loop(), loop.cpu()
    tracker.close()
    trainer.rewards.close()
    trainer.policy.lm.save_pretrained(out / "final")
    trainer.tokenizer.save_pretrained(out / "final")
    n = steps_run * r.batch_size * r.num_generations
    write_result(result_path, side="progrl", precision=cfg.model.precision, algo=plan["algo"], samples=n, loop_s=loop_s,
                 loop_cpu_s=loop_cpu_s, snapshots=snaps.saved, samples_per_step=r.batch_size * r.num_generations,
                 setup_s=setup_s, samples_per_s=n / loop_s, step_rewards=rewards, step_ends=step_ends,
                 time_split={k: sum(x[k] for x in rows) for k in rows[0]},
                 value_head=trainer.policy.value_head is not None,
                 trainable_params=sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad),
                 final_model=str(out / "final"), wall_s=wall(), peak_rss_mb=peak_rss_mb())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
