"""Time to accuracy: held-out accuracy against wall-clock training seconds, progrl vs TRL.

    python bench/compare_trl/time_to_accuracy.py                 # 10 minutes per side
    python bench/compare_trl/time_to_accuracy.py --markdown docs/benchmarks.md --plot docs/img/time_to_accuracy.png

Every side starts from the same model: the arithmetic task's default warm start (the GPT-2 of
`progrl train arithmetic`, 2 layers x 128, warm-started by `progrl sft arithmetic` on the
paper's 256 worked examples), saved once and loaded by every side. Each side trains for
``--minutes`` of training time on prompts drawn by the task's own generator, with the task's
default training reward, and saves its model every ``--snapshot-every`` seconds (the saving
time is not counted). Afterwards every snapshot is scored by the same progrl code (greedy
answers to the held-out prompts), which gives each side's accuracy-vs-seconds curve.

Sides (``--sides``):

- ``progrl``: the default job, `progrl train arithmetic` (its own settings, its own step count),
- ``trl-grpo``: TRL's current ``GRPOTrainer`` (``--grpo-set key=value`` sets any ``GRPOConfig``
  field, e.g. ``learning_rate=3e-4``, ``num_generations=8``; several ``--grpo-set`` lists
  (``--grpo-trial``) run several TRL GRPO settings, the best of which the goal compares to),
- ``trl-ppo``: classic ``trl==0.11.4`` ``PPOTrainer`` (``--ppo-set`` likewise for ``PPOConfig``).

The goal from issue 13: progrl reaches the best accuracy any TRL run reaches in under a third
of the time that TRL run needed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import benchdoc  # noqa: E402
import run as matched  # noqa: E402  (the matched-workload benchmark: venvs, sides, evaluation)

ROOT = HERE.parents[1]
TITLE = "Time to accuracy: progrl vs TRL"

# TRL settings tried as "the best setting we could find" (see docs/benchmarks.md for the trials)
GRPO_DEFAULT = {"learning_rate": 3e-4, "num_generations": 8, "per_device_train_batch_size": 128}
PPO_DEFAULT = {"learning_rate": 3e-4, "batch_size": 128, "mini_batch_size": 64, "ppo_epochs": 4,
               "init_kl_coef": 0.0, "adap_kl_ctrl": False}


def parse_sets(items: list[str]) -> dict:
    """``key=value`` strings to a dict (values parsed as JSON where they parse, else strings)."""
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def build_initial_model(out: Path, args) -> Path:
    """`progrl sft arithmetic` with the task's defaults: the default job's warm-started model."""
    from progrl.cli import main as progrl_main

    folder = out / "initial-model"
    if not (folder / "final" / "config.json").exists():
        matched.say("warm start: progrl sft arithmetic (the default job's warm start)")
        code = progrl_main(["sft", "arithmetic", "--seed", str(args.seed), "--out", str(folder), "--set",
                            f"threads={args.threads}", "--set", "log.progress=false", "--set",
                            "log.tensorboard=false", "--set", "log.plot=false"])
        assert code == 0, "warm start failed"
    return folder / "final"


def records_for(prompts_per_step: int, steps: int, seed: int, task_options: dict) -> list[list[dict]]:
    from progrl.tasks import get_task

    task = get_task("arithmetic", task_options)
    return [[{k: rec[k] for k in ("prompt", "reward_scale", "exact_bonus")}
             for rec in task.train_records(prompts_per_step, seed, step)] for step in range(1, steps + 1)]


def curve(result: dict, n_prompts: int, threads: int, work: Path, start: dict) -> list[dict]:
    """Held-out accuracy of every snapshot of a side (the initial model at t = 0)."""
    points = [{"t": 0.0, "step": 0, "accuracy": start["accuracy"], "mean_reward": start["mean_reward"]}]
    for i, snap in enumerate(result.get("snapshots", [])):
        ev = matched.evaluate(snap["dir"], n_prompts, threads, work / f"eval-{i:03d}")
        points.append({"t": snap["t"], "step": snap["step"], "accuracy": ev["accuracy"],
                       "mean_reward": ev["mean_reward"]})
    return points


def time_to(points: list[dict], accuracy: float) -> float | None:
    """Training seconds until a curve first reaches ``accuracy`` (None: never)."""
    for p in points:
        if p["accuracy"] >= accuracy - 1e-12:
            return p["t"]
    return None


def goal(sides: list[dict]) -> dict:
    """The issue's goal: progrl reaches the best accuracy of any TRL run in < 1/3 of that run's time."""
    ours = next(s for s in sides if s["side"] == "progrl")
    trl = [s for s in sides if s["side"] != "progrl"]
    best = max(trl, key=lambda s: (max(p["accuracy"] for p in s["curve"]),
                                   -time_to(s["curve"], max(p["accuracy"] for p in s["curve"]))))
    target = max(p["accuracy"] for p in best["curve"])
    t_trl = time_to(best["curve"], target)
    t_ours = time_to(ours["curve"], target)
    ratio = None if t_ours is None or not t_trl else t_ours / t_trl
    return {"target": target, "trl_label": best["label"], "t_trl": t_trl, "t_progrl": t_ours, "ratio": ratio,
            "met": ratio is not None and ratio < 1 / 3}


def plot(sides: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s in sides:
        ax.plot([p["t"] for p in s["curve"]], [100 * p["accuracy"] for p in s["curve"]], marker="o", ms=3,
                label=s["label"])
    ax.set_xlabel("training wall-clock seconds")
    ax.set_ylabel("held-out greedy accuracy, %")
    ax.set_title("Arithmetic (one-token task), same warm start")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(report: dict) -> str:
    a = report["args"]
    marks = [m for m in (60, 120, 180, 300, 450, 600, 900, 1200) if m <= a["minutes"] * 60 + 1]
    lines = [f"## {TITLE}", "",
             f"Reproduce: `{report['command']}`. Machine: {report['machine']}; 1-minute load average "
             f"{report['load_before']:.2f} before and {report['load_after']:.2f} after (other jobs share the cores "
             f"when it is above ~0.5); `torch.set_num_threads({a['threads']})` on every side; the sides ran one after "
             f"the other. Every side starts from the default job's warm-started model (2 x 128 GPT-2, 256 worked "
             f"examples, held-out accuracy {100 * report['start']['accuracy']:.1f}%) and trains for "
             f"{a['minutes']:g} minutes of training time (model saving excluded) with the task's default training "
             f"reward; accuracy is greedy exact match on {a['eval_prompts']} held-out prompts, scored by progrl's "
             "evaluation for every side. Seed 0 for every side.", "",
             f"![time to accuracy]({report.get('plot_rel', 'img/time_to_accuracy.png')})", "",
             "| side | settings | samples/s | samples in the budget | " +
             " | ".join(f"acc. at {m} s" for m in marks) + " | best acc. (at s) |",
             "|---|---|---|---|" + "---|" * len(marks) + "---|"]
    for s in report["sides"]:
        def at(t):
            pts = [p for p in s["curve"] if p["t"] <= t + 1e-9]
            return f"{100 * pts[-1]['accuracy']:.1f}%" if pts else "-"
        best = max(s["curve"], key=lambda p: p["accuracy"])
        lines.append(f"| {s['label']} | {s['settings']} | {s['samples_per_s']:.0f} | {s['samples']:,} | "
                     + " | ".join(at(m) for m in marks) + f" | {100 * best['accuracy']:.1f}% ({best['t']:.0f}) |")
    for f in report.get("failed", []):
        lines.append(f"| {f['label']} | {f['settings']} | failed: {f['error']} |" + " |" * (len(marks) + 2))
    g = report.get("goal")  # only when both a progrl and a TRL side ran
    lines += [] if g is None else ["", f"Goal: progrl reaches the best accuracy any TRL run reaches ({100 * g['target']:.1f}%, "
              f"{g['trl_label']}, at {g['t_trl']:.0f} s) in under a third of that time: "
              + (f"progrl reached it at {g['t_progrl']:.0f} s = {g['ratio']:.2f}x the TRL time: "
                 f"{'**met**' if g['met'] else '**not met**'}." if g["t_progrl"] is not None
                 else "progrl never reached it: **not met**.")]
    lines += ["", *report.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training time per side")
    p.add_argument("--snapshot-every", type=float, default=30.0, help="seconds of training between snapshots")
    p.add_argument("--sides", default="progrl,trl-grpo,trl-ppo")
    p.add_argument("--grpo-set", action="append", default=[], metavar="KEY=VALUE", help="a GRPOConfig field")
    p.add_argument("--grpo-trial", action="append", default=[], metavar="K=V,K=V",
                   help="one more TRL GRPO setting (comma-separated GRPOConfig fields); repeatable")
    p.add_argument("--ppo-set", action="append", default=[], metavar="KEY=VALUE", help="a PPOConfig field")
    p.add_argument("--progrl-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a progrl config override of the default job (dotted key)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-prompts", type=int, default=512)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "time_to_accuracy"))
    p.add_argument("--venvs", default=str(ROOT / "bench" / "out"))
    p.add_argument("--markdown", help="write the section into this markdown file")
    p.add_argument("--plot", help="write the plot here (PNG)")
    p.add_argument("--from-report", action="store_true", help="run nothing: re-render OUT/report.json")
    p.add_argument("--reuse", action="store_true",
                   help="sides whose OUT/<side>/result.json exists (same TRL settings) are read back, not run again")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.from_report:
        report = json.loads((out / "report.json").read_text())
    else:
        report = run_all(args, out, argv)
    if args.plot:
        plot(report["sides"], Path(args.plot))
        if args.markdown:
            report["plot_rel"] = os.path.relpath(args.plot, Path(args.markdown).parent)
    benchdoc.publish(markdown(report), TITLE, args.markdown)
    return 0


def run_all(args, out: Path, argv) -> dict:
    from progrl.config import apply_override
    from progrl.tasks import get_task

    load_before = os.getloadavg()[0]
    failed: list[dict] = []
    out.mkdir(parents=True, exist_ok=True)
    model_dir = build_initial_model(out, args)
    start = matched.evaluate(str(model_dir), args.eval_prompts, args.threads, out / "initial-eval")
    budget = args.minutes * 60
    task = get_task("arithmetic")
    progrl_over: dict = {}
    for kv in args.progrl_set:
        progrl_over = apply_override(progrl_over, kv)
    task_options = {**task.defaults().get("task_options", {}), **progrl_over.get("task_options", {})}
    # every side trains on the same reward shaping: the progrl side builds its task from these options too
    # (until 2026-12-01 it did not, and trained at the task class's scale 10 while TRL got the default's 1)
    base = {"model_dir": str(model_dir), "seed": args.seed, "threads": args.threads, "banned_tokens": matched.BANNED,
            "task_options": task_options,
            "time_budget_s": budget, "snapshot_every_s": args.snapshot_every}
    max_rate = 1500  # samples/s no side reaches on this CPU: enough prompts for the whole budget
    specs = []
    sides = args.sides.split(",")
    if "progrl" in sides:
        specs.append(("progrl", "progrl default (`progrl train arithmetic`)", matched.Path(sys.executable),
                      "progrl_side.py", {**base, "algo": "default", "overrides": progrl_over, "samples_per_step": 128,
                                         "steps": progrl_over.get("steps"), "records": []},
                      ", ".join(args.progrl_set) or "the task's defaults"))
    if "trl-grpo" in sides:
        py = matched.ensure_venv(Path(args.venvs), "venv-trl")
        trials = [parse_sets(args.grpo_set)] + [parse_sets(t.split(",")) for t in args.grpo_trial]
        for i, trial in enumerate(trials):
            trl_args = {**GRPO_DEFAULT, **trial}
            n, G = trl_args["per_device_train_batch_size"], trl_args["num_generations"]
            steps = math.ceil(max_rate * budget / n)
            hp = {**matched.GRPO_HPARAMS, "num_generations": G, "lr": trl_args["learning_rate"]}
            plan = {**base, "algo": "grpo", "samples_per_step": n, "steps": steps, "hparams": hp,
                    "trl_args": trl_args, "records": records_for(n // G, steps, args.seed, task_options)}
            settings = ", ".join(f"{k}={v}" for k, v in trl_args.items())
            specs.append((f"trl-grpo-{i}", "TRL GRPOTrainer", py, "trl_grpo_side.py", plan, settings))
    if "trl-ppo" in sides:
        py = matched.ensure_venv(Path(args.venvs), "venv-trl011")
        trl_args = {**PPO_DEFAULT, **parse_sets(args.ppo_set)}
        n = trl_args["batch_size"]
        steps = math.ceil(max_rate * budget / n)
        hp = {**matched.PPO_HPARAMS, "lr": trl_args["learning_rate"], "mini_batch_size": trl_args["mini_batch_size"],
              "ppo_epochs": trl_args["ppo_epochs"]}
        plan = {**base, "algo": "ppo", "samples_per_step": n, "steps": steps, "hparams": hp, "trl_args": trl_args,
                "records": records_for(n, steps, args.seed, task_options)}
        specs.append(("trl-ppo", "TRL PPOTrainer 0.11.4", py, "trl_ppo_side.py", plan,
                      ", ".join(f"{k}={v}" for k, v in trl_args.items())))
    results = []
    for tag, label, py, script, plan, settings in specs:
        saved = out / tag / "result.json"
        if args.reuse and saved.exists() and json.loads((out / tag / "plan.json").read_text()).get("trl_args") == \
                plan.get("trl_args"):
            matched.say(f"{tag}: reusing {saved}")
            res = json.loads(saved.read_text())
        else:
            try:
                res = matched.run_side(py, script, plan, out / tag, f"{tag}")
            except RuntimeError as exc:  # e.g. a TRL run that diverged: a result of its own, not the end of the report
                last = str(exc).strip().splitlines()[-1]
                matched.say(f"{tag}: failed: {last}")
                failed.append({"tag": tag, "label": label, "settings": settings, "error": last})
                continue
        pts = curve(res, args.eval_prompts, args.threads, out / tag, start)
        results.append({"side": "progrl" if tag == "progrl" else "trl", "tag": tag,
                        "label": label + (f" #{tag.rsplit('-', 1)[-1]}" if tag.startswith("trl-grpo") else ""),
                        "settings": settings, "samples": res["samples"], "samples_per_s": res["samples"] / res["loop_s"],
                        "loop_s": res["loop_s"], "curve": pts})
        matched.say(f"{tag}: best held-out accuracy {max(p['accuracy'] for p in pts):.3f}")
    cmd = "python bench/compare_trl/time_to_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"args": vars(args), "command": cmd.strip(), "load_before": load_before,
              "load_after": os.getloadavg()[0], "start": start, "sides": results, "failed": failed,
              "machine": f"{os.cpu_count()}-core {platform.machine()} CPU ({benchdoc.cpu_model()}), Linux, no GPU",
              "date": time.strftime("%Y-%m-%d %H:%M")}
    if any(s["side"] == "trl" for s in results) and any(s["side"] == "progrl" for s in results):
        report["goal"] = goal(results)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    raise SystemExit(main())
