"""Arithmetic ablations: which exploration bonus / estimator / shaping learns the task.

Runs ``progrl train arithmetic`` once per (variant, seed) in parallel subprocesses, reads
each run's final held-out evaluation, and prints (or writes into docs/results.md) a table:
final greedy accuracy, mean paper reward, distinct greedy answers, and whether the policy
collapsed (one answer for every held-out prompt).

    python bench/arith_ablation.py --suite ablation --seeds 0 1 2 --jobs 2
    python bench/arith_ablation.py --suite sweep --device cuda --jobs 12 --markdown docs/results.md

Every variant of a suite uses the same RL budget (``--samples``, default the task's default job:
98,304 sampled answers for ``arithmetic``; the paper's is 131,072) and the same warm start, so rows
are comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, however this file is loaded
import benchdoc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Each variant: overrides on top of the task defaults (the `progrl train arithmetic` default:
# 2x128 GPT-2, warm start on 256 examples, PPO 2 epochs + RAFT term with replay, lr 1e-3, token
# entropy 0.1, reward scale 1: progrl/tasks/arithmetic.py).
NO_BONUS = {"algo.entropy_coef": 0.0, "algo.batch_entropy_coef": 0.0}
GROUP8 = {"rollout.num_generations": 8, "rollout.batch_size": 16}
SUITES: dict[str, dict[str, dict]] = {
    # the foundation issue's ablation: PPO with no entropy term / token entropy / batch entropy
    "ablation": {
        "ppo, no entropy term": {"algo.estimator": "gae", **NO_BONUS},
        "ppo + token entropy 0.1": {"algo.estimator": "gae", **NO_BONUS, "algo.entropy_coef": 0.1},
        "ppo + batch entropy 0.1": {"algo.estimator": "gae", **NO_BONUS, "algo.batch_entropy_coef": 0.1},
    },
    # critic-free estimators on the same loop: 16 prompts x 8 samples, same epochs and bonus
    "estimators": {
        "grpo (G=8) + batch entropy 0.1": {"algo.estimator": "grpo", **GROUP8},
        "rloo (G=8) + batch entropy 0.1": {"algo.estimator": "rloo", **GROUP8},
    },
    # the paper's open question 1: token entropy vs batch entropy at four strengths, on top of
    # the task's default job (whatever bonus the default has is replaced)
    "bonus": {
        "no entropy term": {**NO_BONUS},
        **{f"token entropy {c:g}": {**NO_BONUS, "algo.entropy_coef": c} for c in (0.01, 0.03, 0.1, 0.3)},
        **{f"batch entropy {c:g}": {**NO_BONUS, "algo.batch_entropy_coef": c} for c in (0.01, 0.03, 0.1, 0.3)},
    },
    # the paper's setting and the steps from it to the default (single seed)
    "path": {
        "paper: 4x256, lr 1.41e-5, token entropy 0.3, whiten, scale 10": {
            "model.n_layer": 4, "model.n_embd": 256, "algo.lr": 1.41e-5, "algo.minibatch_size": 32,
            "algo.whiten_advantages": True, **NO_BONUS, "algo.entropy_coef": 0.3, "task_options.reward_scale": 10.0},
        "default but reward scale 10 (paper)": {"task_options.reward_scale": 10.0},
        "default but whitened advantages": {"algo.whiten_advantages": True},
        "default but lr 1e-4": {"algo.lr": 1e-4},
    },
}


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, str) else str(v)


def variant_steps(overrides: dict, samples: int | None, task: str = "arithmetic") -> int:
    """RL steps for a budget of ``samples`` sampled answers (None: the task's default budget)."""
    from progrl.tasks import get_task

    d = get_task(task).defaults()
    per_step = (int(overrides.get("rollout.batch_size", d.get("rollout", {}).get("batch_size", 128)))
                * int(overrides.get("rollout.num_generations", d.get("rollout", {}).get("num_generations", 1))))
    if samples is None:
        samples = int(d["steps"]) * (d.get("rollout", {}).get("batch_size", 128)
                                     * d.get("rollout", {}).get("num_generations", 1))
    return max(1, samples // per_step)


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def task_dir(task: str) -> str:
    """The task's folder under ``--out`` (the one-token task's runs sit at its top, as they always have)."""
    return "" if task == "arithmetic" else task


def warm_start(seed: int, args, out_root: Path) -> Path:
    """One supervised warm start per seed, shared by every variant of that seed."""
    out = out_root / task_dir(args.task) / f"warm-start-s{seed}"  # each task's own warm start
    if not (out / "final" / "config.json").exists():
        cmd = [sys.executable, "-m", "progrl", "sft", args.task, "--seed", str(seed), "--out", str(out),
               "--set", "log.progress=false", "--set", f"device={args.device}", "--set", f"threads={args.threads}",
               "--set", "log.tensorboard=false", "--set", "log.plot=false"]
        subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env(), check=True)
    return out / "final"


def run_one(name: str, overrides: dict, seed: int, args, out_root: Path) -> dict:
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    out = out_root / task_dir(args.task) / f"{slug}-s{seed}"
    steps = variant_steps(overrides, args.samples, args.task)
    model = []
    if args.shared_warm_start and not any(k.startswith(("model.", "sft.")) for k in overrides):
        model = ["--model", str(warm_start(seed, args, out_root)), "--set", "sft.examples=0"]
    cmd = [sys.executable, "-m", "progrl", "train", args.task, "--steps", str(steps), "--seed", str(seed), *model,
           "--out", str(out), "--set", "log.progress=false", "--set", f"device={args.device}",
           "--set", "log.checkpoint_every=0", "--set", f"threads={args.threads}"]
    if args.eval_every:
        cmd += ["--set", f"eval.every={max(1, steps // args.eval_every)}"]
    for k, v in overrides.items():
        cmd += ["--set", f"{k}={toml_value(v)}"]
    for kv in args.set:
        cmd += ["--set", kv]
    t0 = time.time()
    done = out / "summary.json"
    if (args.reuse or args.finished_only) and done.exists():  # finished earlier (same variant, seed, budget)
        proc, elapsed = None, json.loads(done.read_text())["seconds"]
    elif args.finished_only:  # not run (yet): left out of the table, which says so
        return {"variant": name, "seed": seed, "missing": True}
    else:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env())
        elapsed = time.time() - t0
    if proc is not None and proc.returncode != 0:
        return {"variant": name, "seed": seed, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:],
                "seconds": elapsed}
    if proc is not None:
        done.write_text(json.dumps({"seconds": elapsed, "steps": steps, "cmd": cmd}))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    evals = [r for r in rows if r["phase"] == "eval"]
    train = [r for r in rows if r["phase"] == "train"]
    return {"variant": name, "seed": seed, "steps": steps, "seconds": elapsed,
            "accuracy_before": evals[0].get("accuracy"), "accuracy": evals[-1].get("accuracy"),
            "mean_reward": evals[-1].get("mean_reward"), "distinct": evals[-1].get("distinct_answers"),
            # the whole-chain task's goal: held-out chains with every step right (None on the one-token task)
            "chain_exact_before": evals[0].get("chain_exact"), "chain_exact": evals[-1].get("chain_exact"),
            "train_reward_last": statistics.mean(r["reward_mean"] for r in train[-10:]) if train else None,
            "curve": [(r["step"], r.get("accuracy")) for r in evals], "out": str(out)}


def _per_step(task: str) -> int:
    from progrl.tasks import get_task

    r = get_task(task).defaults().get("rollout", {})
    return r.get("batch_size", 128) * r.get("num_generations", 1)


def collapsed(run: dict) -> bool:
    """One answer for every held-out prompt, or noise: held-out mean reward below 0.01 (the
    capped error's ~0), e.g. a chain policy that writes uniform tokens."""
    return run["distinct"] <= 1 or run["mean_reward"] < 0.01


def summarise(results: list[dict]) -> list[dict]:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["variant"], []).append(r)
    rows = []
    for name, rs in by.items():
        ok = [r for r in rs if "error" not in r and "missing" not in r]
        if not ok:
            failed = [r for r in rs if "error" in r]
            rows.append({"variant": name, "error": f"failed: {failed[0]['error']}" if failed else "not run"})
            continue
        acc = [r["accuracy"] for r in ok]
        exact = [r.get("chain_exact") for r in ok]
        exact = exact if None not in exact else []  # every run's, so each lines up with its seed, or none
        rows.append({
            "variant": name, "seeds": len(ok),
            "accuracy": statistics.mean(acc), "accuracy_sd": statistics.pstdev(acc) if len(acc) > 1 else 0.0,
            "accuracy_each": acc, "seed_each": [r["seed"] for r in ok],
            "chain_exact": statistics.mean(exact) if exact else None,
            "chain_exact_sd": statistics.pstdev(exact) if len(exact) > 1 else 0.0,
            "chain_exact_each": exact,
            "mean_reward": statistics.mean(r["mean_reward"] for r in ok),
            "distinct": statistics.mean(r["distinct"] for r in ok),
            "collapsed": sum(1 for r in ok if collapsed(r)),
            "minutes": statistics.mean(r["seconds"] for r in ok) / 60,
        })
    return rows


def per_seed(row: dict, seeds: list[int], key: str = "accuracy_each") -> str:
    """The accuracy of each seed's run; named by seed when some of the asked seeds did not finish."""
    if row["seed_each"] == list(seeds):
        return ", ".join(f"{a:.3f}" for a in row[key])
    return ", ".join(f"s{s} {a:.3f}" for s, a in zip(row["seed_each"], row[key]))


def starts(results: list[dict]) -> str:
    """Each seed's held-out numbers before RL (its warm start), from the runs that finished."""
    seen: dict[int, str] = {}
    for r in results:
        if r.get("accuracy_before") is not None and r["seed"] not in seen:
            exact = r.get("chain_exact_before")
            seen[r["seed"]] = (f"s{r['seed']} {r['accuracy_before']:.3f}"
                               + (f" (every step right {exact:.3f})" if exact is not None else ""))
    return ", ".join(seen[s] for s in sorted(seen))


def markdown(rows: list[dict], title: str, args, load: str = "not recorded", start: str = "") -> str:
    budget = args.samples or variant_steps({}, None, args.task) * _per_step(args.task)
    lines = [f"## {title}", "",
             f"Task `{args.task}`; budget per run: {budget:,} sampled answers; device {args.device}; seeds "
             f"{', '.join(map(str, args.seeds))}; extra settings: {' '.join(args.set) or 'none'}; "
             f"1-minute load average {load}. Reproduce: `python bench/arith_ablation.py --task {args.task} "
             f"--suite {args.suite} --seeds {' '.join(map(str, args.seeds))}"
             f"{' --only ' + ' '.join(repr(v) for v in args.only) if args.only else ''}"
             f"{f' --samples {args.samples}' if args.samples else ''}"
             f"{' --shared-warm-start' if args.shared_warm_start else ''}` "
             f"({'one warm start per seed shared by the variants' if args.shared_warm_start else 'own warm start per run'})."
             + (f" Held-out accuracy before RL: {start}." if start else ""), ""]
    chains = any(r.get("chain_exact") is not None for r in rows)
    head = ["variant", "held-out accuracy (mean ± sd)", "per seed", "mean reward", "distinct answers",
            "collapsed runs", "minutes/run"]
    if chains:  # the chain task's goal first: every step right, not only the final number
        head[1:1] = ["every step right (mean ± sd)", "per seed"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [r["variant"], f"{r['accuracy']:.3f} ± {r['accuracy_sd']:.3f}", per_seed(r, args.seeds),
                 f"{r['mean_reward']:.3f}", f"{r['distinct']:.0f}", f"{r['collapsed']}/{r['seeds']}",
                 f"{r['minutes']:.1f}"]
        if chains:
            cells[1:1] = [f"{r['chain_exact']:.3f} ± {r['chain_exact_sd']:.3f}",
                          per_seed(r, args.seeds, "chain_exact_each")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="ablation", choices=sorted(SUITES) + ["all"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="+", default=None, metavar="VARIANT",
                   help="run only these variants of the suite (their names as in the table)")
    p.add_argument("--samples", type=int, default=None,
                   help="sampled answers per run (RL budget; default: the task's default budget)")
    p.add_argument("--task", default="arithmetic", choices=["arithmetic", "arithmetic-chain"])
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval-every", type=int, default=0, help="evaluations per run (for curves)")
    p.add_argument("--set", action="append", default=[], help="extra override for every run, key=value")
    p.add_argument("--out", default="bench/out/arith")
    p.add_argument("--shared-warm-start", action="store_true",
                   help="one warm start per seed shared by all variants (saves time; same start for each)")
    p.add_argument("--markdown", help="write the table into this markdown file (its own section)")
    p.add_argument("--reuse", action="store_true", help="read back runs that finished earlier instead of rerunning")
    p.add_argument("--finished-only", action="store_true",
                   help="run nothing: tabulate the runs that finished earlier (a cut-short grid; the per-seed "
                        "column names the seeds that did)")
    p.add_argument("--json", help="write all per-run results to this JSON file")
    args = p.parse_args(argv)
    suites = SUITES if args.suite == "all" else {args.suite: SUITES[args.suite]}
    variants = {k: v for s in suites.values() for k, v in s.items()}
    if args.only:
        unknown = [v for v in args.only if v not in variants]
        if unknown:
            p.error(f"unknown variant(s) {unknown}; the suite has {sorted(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.only}
    out_root = ROOT / args.out
    jobs = [(n, o, s) for s in args.seeds for n, o in variants.items()]  # seed by seed: a cut-short run has whole seeds
    if args.shared_warm_start and not args.finished_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda s: warm_start(s, args, out_root), args.seeds))
    load_start = os.getloadavg()[0]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_one(*j, args, out_root), jobs))
    load = (f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end" if not args.finished_only
            else "not recorded (tabulated afterwards)")
    rows = summarise(results)
    title = f"Arithmetic {args.suite}" + ("" if args.task == "arithmetic" else f" ({args.task})")
    text = markdown(rows, title, args, load, starts(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    benchdoc.publish(text, title, args.markdown, heading="# Results")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
