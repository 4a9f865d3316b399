"""progrl vs TRL on the same workload, side by side, in one invocation.

    python bench/compare_trl/run.py                      # both comparisons, writes nothing but bench/out
    python bench/compare_trl/run.py --markdown docs/benchmarks.md   # also (re)writes "## progrl vs TRL"

Workload: the arithmetic task (one-token answers; progrl.tasks.arithmetic prompts, tokenizer
and reward), a GPT-2 of 4 layers x 256 wide, 4 heads, context 64, built from a config ONCE,
warm-started ONCE with progrl's supervised warm start, saved with ``save_pretrained`` and
loaded by every side; 64 sampled answers per step, CPU, fp32.

(a) progrl GRPO  vs  the current ``trl.GRPOTrainer`` (8 generations per prompt, one update
    per batch, no KL, same lr / clipping / grad-norm clip, constant lr schedule).
(b) progrl PPO (gae, value head, 4 epochs)  vs  classic ``trl==0.11.4`` ``PPOTrainer``
    (same minibatch, epochs, adaptive KL in the reward, clipping, vf_coef, GAE settings).

Each side runs in its own subprocess (TRL ones in their own virtual environments under
bench/out, created on first use: ``torch==2.13.0`` first, then trl), for the same number
of samples and the same prompts in the same order. Per side: samples/s of the training
loop, the subprocess's peak RSS (``os.wait4`` rusage), the mean training reward over the
last steps, and the held-out greedy accuracy / reward of the final model, evaluated by the
same progrl code for both sides.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchdoc  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

TORCH = "torch==2.13.0"
VENVS = {
    # name: packages installed after torch (torch first, so pip keeps the local CPU wheel)
    "venv-trl": ["trl", "psutil"],
    "venv-trl011": ["trl==0.11.4", "transformers==4.46.3", "rich", "psutil"],
}

GRPO_HPARAMS = {"num_generations": 8, "lr": 1e-4, "clip_range": 0.2, "max_grad_norm": 1.0, "beta": 0.0}
PPO_HPARAMS = {"lr": 1e-4, "mini_batch_size": 16, "ppo_epochs": 4, "init_kl_coef": 0.2, "adap_kl_ctrl": True,
               "target": 6.0, "horizon": 10000.0, "gamma": 1.0, "lam": 0.95, "clip_range": 0.2,
               "clip_range_value": 0.2, "vf_coef": 0.1, "max_grad_norm": 1.0}
BANNED = ["<pad>", "<bos>", "<unk>"]  # the task's rollout.banned_tokens, on both sides

NOTES = [
    "How the sides are matched: GRPO: group-normalised advantages `(r - mean) / (std + 1e-4)` (unbiased std) on "
    "both, token-mean loss (TRL `loss_type=\"dapo\"`; with one-token answers every aggregation is the same), "
    "`num_iterations=1` / `epochs=1` and one optimiser step per 64-sample batch, clip 0.2, grad-norm clip 1.0, "
    "AdamW without weight decay, constant lr, `beta=0` / `kl_coef=0`. PPO: GAE (gamma 1, lambda 0.95) with a value "
    "head on the shared trunk, whitened advantages, 4 epochs x minibatches of 16, clip 0.2 / value clip 0.2, "
    "vf_coef 0.1, the k1 KL penalty in the reward with the adaptive controller (0.2, target 6, horizon 10000) and a "
    "frozen reference copy, grad-norm clip 1.0. Both: temperature 1, no top-k/top-p, `<pad>`/`<bos>`/`<unk>` never "
    "sampled (TRL: `suppress_tokens`), bf16 and gradient checkpointing off (TRL GRPO defaults them on).",
    "",
    "Why progrl is faster on GRPO: the 8 samples of a prompt share the prompt, and the transformer's work on a "
    "prompt does not depend on what is sampled after it, so progrl runs each distinct prompt once when sampling and "
    "when scoring for the update (and for the reference), handing every sample the same keys/values "
    "(`progrl.rollout.prefill`). With one-token answers that is 1/8 of the model work, with identical results (the "
    "same samples and rewards step for step as without the sharing; the tests compare log-probs, values and "
    "gradients with a plain pass). TRL's `GRPOTrainer` generates and scores all 64 rows. progrl also runs GPT-2's "
    "`gelu_new` as one fused kernel (`gelu(x, approximate=\"tanh\")`, the same function up to float rounding), "
    "which saves ~10% of the time and most of the activation memory, and never feeds the last response token to "
    "the model (nothing is predicted from it).",
    "",
    "Why not 5x on PPO: with one sample per prompt there is nothing to share, and the prompts (whole worked chains, "
    "28-29 tokens, all nearly the same length) leave no padding to remove. A step is 4 epochs x 4 minibatches of "
    "forward + backward passes over 16 prompts, plus one sampling pass and one reference pass over the 64 prompts; "
    "classic TRL runs the same passes plus one more forward (it recomputes the sampling policy's log-probs and "
    "values, which progrl keeps from sampling). The \"model-work floor\" rows measure those passes alone "
    "(`bench/compare_trl/floor_side.py`: the same GPT-2 with progrl's fused GELU and fused AdamW, a value head, the loss at the "
    "answer position; no RL code, no logging, no decoding): no implementation of this algorithm with these "
    "kernels can be faster, so floor / TRL is the ceiling of the speed-up, and it is far below 5x (the line under the goals "
    "gives it, and how close progrl comes to the floor). Other kernels do not close the gap on this CPU either: in "
    "a separate micro-benchmark (forward + backward + AdamW on a 16 x 29-token minibatch, one thread) "
    "`torch.compile` gave no gain (136 vs 139 ms), and "
    "bf16 autocast (the bf16 floor row; a numerics change) about 1.5x. 5x over classic TRL here would need a "
    "different algorithm (fewer epochs or passes), not a faster implementation of this one. Two threads per side "
    "change nothing (`python bench/compare_trl/run.py --only ppo --threads 2 --repeats 1`, 2026-11-21: progrl / "
    "TRL 1.21x; ceiling 1.13x float32, 1.38x bfloat16).",
    "",
    "Throughput is measured over the training loop only (sampling, reward, update, logging; TRL: "
    "`on_train_begin` to `on_train_end`, progrl: the `rl_step` loop), so start-up and imports are not "
    "counted (bench/out/compare_trl/report.json also has each subprocess's whole wall time, its CPU seconds and "
    "every repeat's numbers). Peak RSS is the side's own high-water mark "
    "(`VmHWM` of `/proc/self/status` at its end; `ru_maxrss` is not used because Linux carries it over from the "
    "parent across fork + exec).",
]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ----------------------------------------------------------------------------- environments


def ensure_venv(out: Path, name: str) -> Path:
    """The TRL side's virtual environment, created and filled on first use."""
    venv = out / name
    python = venv / "bin" / "python"
    marker = venv / ".compare_trl_ready"
    wanted = json.dumps([TORCH, *VENVS[name]])
    if marker.exists() and marker.read_text() == wanted and python.exists():
        return python
    say(f"creating {venv} ({', '.join([TORCH, *VENVS[name]])}); this takes a few minutes once")
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, *VENVS[name]], check=True)
    marker.write_text(wanted)
    return python


def package_versions(python: Path, names: list[str]) -> dict:
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    proc = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


# ----------------------------------------------------------------------------- the shared model


def build_initial_model(folder: Path, args) -> dict:
    """GPT-2 4 x 256 from a config + progrl's supervised warm start; saved for every side."""
    import torch

    from progrl import modeling
    from progrl.sft import supervised_warm_start
    from progrl.tasks import get_task

    torch.set_num_threads(args.threads)
    task = get_task("arithmetic")
    tok = modeling.prepare_tokenizer(task.build_tokenizer())
    lm = modeling.build_causal_lm_from_config(
        "gpt2", len(tok), n_layer=4, n_embd=256, n_head=4, n_positions=64, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, seed=args.seed)
    modeling.sync_pad_token(lm, tok)
    t0 = time.time()
    losses = []
    if args.warm_start:
        texts = task.sft_texts(args.warm_start, 1)
        losses = supervised_warm_start(lm, tok, texts, epochs=args.warm_start_epochs, lr=1e-3, batch_size=32,
                                       seed=1, device=torch.device("cpu"))
    lm.eval()
    if folder.exists():
        shutil.rmtree(folder)
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    info = {"params": sum(p.numel() for p in lm.parameters()), "warm_start_examples": args.warm_start,
            "warm_start_epochs": args.warm_start_epochs, "warm_start_loss": losses[-1] if losses else None,
            "seconds": time.time() - t0}
    say(f"initial model: {info['params']:,} parameters, warm start {args.warm_start} examples x "
        f"{args.warm_start_epochs} epochs (loss {info['warm_start_loss']}) in {info['seconds']:.0f}s -> {folder}")
    return info


def step_records(prompts_per_step: int, steps: int, seed: int) -> list[list[dict]]:
    """The prompts of every RL step, exactly as progrl's trainer draws them."""
    from progrl.tasks import get_task

    task = get_task("arithmetic")
    return [[{k: rec[k] for k in ("prompt", "reward_scale", "exact_bonus")}
             for rec in task.train_records(prompts_per_step, seed, step)] for step in range(1, steps + 1)]


# ----------------------------------------------------------------------------- running a side


def run_side(python: Path, script: str, plan: dict, work: Path, label: str) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    plan_path, result_path = work / "plan.json", work / "result.json"
    plan = {**plan, "out_dir": str(work)}
    plan_path.write_text(json.dumps(plan))
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": str(plan["threads"]),
           "MKL_NUM_THREADS": str(plan["threads"]), "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONWARNINGS": "ignore", "WANDB_DISABLED": "true", "DISABLE_TQDM": "1", "TQDM_DISABLE": "1"}
    if "venv-trl" in str(python):
        env["PYTHONPATH"] = str(HERE)  # TRL sides must not see the progrl package (nor /work/venv's packages)
    log = (work / "log.txt").open("w")
    say(f"{label}: running {script} ({plan['steps']} steps x {plan['samples_per_step']} samples)")
    t0 = time.time()
    proc = subprocess.Popen([str(python), str(HERE / script), str(plan_path), str(result_path)], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    if proc.returncode != 0 or not result_path.exists():
        tail = "\n".join((work / "log.txt").read_text().splitlines()[-25:])
        raise RuntimeError(f"{label} failed (exit {proc.returncode}); last lines of {work / 'log.txt'}:\n{tail}")
    result = json.loads(result_path.read_text())
    result["process_wall_s"] = time.time() - t0
    # the side reports its own peak (VmHWM); wait4's ru_maxrss includes this parent's size (see common.peak_rss_mb)
    result["rusage_maxrss_mb"] = usage.ru_maxrss / 1024.0
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    say(f"{label}: {result['samples_per_s']:.1f} samples/s (loop {result['loop_s']:.1f}s, process "
        f"{result['process_wall_s']:.1f}s), peak RSS {result['peak_rss_mb']:.0f} MB, "
        f"last-{min(10, len(result['step_rewards']))} reward {statistics.mean(result['step_rewards'][-10:]):.3f}")
    return result


def steady_samples_per_s(run: dict) -> float:
    """Samples per step / the median step time: the loop's rate without the steps that other jobs slowed down."""
    ends = run["step_ends"]
    steps = [b - a for a, b in zip([0.0, *ends[:-1]], ends)]
    return run["samples"] / len(ends) / statistics.median(steps)


def combine(runs: list[dict]) -> dict:
    """Repeats of one side: the first run's rewards and model (the runs are seeded alike), the best
    throughput (the run least disturbed by other jobs on the machine) and the largest peak RSS."""
    best = max(runs, key=lambda r: r["samples_per_s"])
    out = dict(runs[0])
    out.update(samples_per_s=best["samples_per_s"], loop_s=best["loop_s"], process_wall_s=best["process_wall_s"],
               cpu_s=best["cpu_s"], peak_rss_mb=max(r["peak_rss_mb"] for r in runs),
               loop_cpu_s=min(r["loop_cpu_s"] for r in runs),
               steady_samples_per_s=max(steady_samples_per_s(r) for r in runs),
               all_samples_per_s=[r["samples_per_s"] for r in runs],
               all_steady_samples_per_s=[steady_samples_per_s(r) for r in runs],
               all_samples_per_cpu_s=[r["samples"] / r["loop_cpu_s"] for r in runs],
               all_reward_last=[statistics.mean(r["step_rewards"][-10:]) for r in runs])
    return out


def evaluate(model_dir: str, n_prompts: int, threads: int, work: Path) -> dict:
    """Held-out greedy accuracy and paper reward of a final model, by progrl's evaluation code."""
    from progrl.config import build_config
    from progrl.tasks import get_task
    from progrl.trainer import Trainer

    task = get_task("arithmetic")
    cfg = build_config(task.defaults(), {"model": {"name": model_dir}, "sft": {"examples": 0}, "device": "cpu",
                                         "threads": threads, "algo": {"estimator": "grpo"},
                                         "rollout": {"num_generations": 2}, "eval": {"n_prompts": n_prompts}})
    trainer = Trainer(cfg, task, work)
    try:
        return trainer.evaluate()
    finally:
        trainer.rewards.close()


# ----------------------------------------------------------------------------- report


def summarise(side: dict, last: int) -> dict:
    r = side["step_rewards"]
    return {"samples_per_s": side["samples_per_s"], "samples_per_cpu_s": side["samples"] / side["loop_cpu_s"],
            "steady_samples_per_s": side["steady_samples_per_s"], "peak_rss_mb": side["peak_rss_mb"],
            "reward_last": statistics.mean(r[-last:]), "reward_all": statistics.mean(r),
            "reward_last_se": statistics.stdev(r[-last:]) / math.sqrt(len(r[-last:])) if len(r[-last:]) > 1 else 0.0,
            "loop_s": side["loop_s"], "process_s": side["process_wall_s"], "cpu_s": side["cpu_s"],
            "eval": side.get("eval", {})}


def markdown(report: dict) -> str:
    a = report["args"]
    v = report["versions"]
    m = report["model"]
    lines = [
        "## progrl vs TRL", "",
        f"Reproduce: `{report['command']}` (this run: {report['minutes']:.0f} minutes; the first run also creates "
        "the two TRL virtual environments under `bench/out/`, a few minutes more).", "",
        f"Machine: {report['machine']}, no GPU; 1-minute load average {report.get('load_before', math.nan):.2f} when the "
        "run began (other jobs, if any, share the cores). Every side runs with "
        f"`torch.set_num_threads({a['threads']})`; each side runs {a['repeats']} times, alternating with the other "
        "side, and the best run counts (the one least disturbed by other jobs). On a shared machine the samples/s of "
        "two back-to-back runs of the same side can differ by 20-30%; \"median step\" (samples per step / the median "
        "step time) drops the steps that another job slowed down and is the steadier number. The ratios are what "
        "matter.", "",
        f"Versions: progrl {v['progrl']['progrl']} on transformers {v['progrl']['transformers']}; "
        f"TRL GRPO side: trl {v['venv-trl']['trl']} on transformers {v['venv-trl']['transformers']}; "
        f"classic TRL PPO side: trl {v['venv-trl011']['trl']} on transformers {v['venv-trl011']['transformers']}; "
        f"torch {v['progrl']['torch']} and Python {platform.python_version()} on every side.", "",
        f"Workload: the arithmetic task (one-token answers; the task's prompts, tokenizer and reward), a GPT-2 of "
        f"4 layers x 256, 4 heads, context 64 ({m['params']:,} parameters), built from a config once, warm-started "
        f"once ({m['warm_start_examples']} worked examples x {m['warm_start_epochs']} epochs), saved with "
        f"`save_pretrained` and loaded by every side; {a['samples_per_step']} sampled answers per step, the same "
        "prompts in the same order on both sides; fp32, CPU; each side in its own subprocess. \"Held-out\": greedy "
        f"answers to {a['eval_prompts']} held-out prompts scored by the same progrl code for every model "
        f"(accuracy = exact answer, reward = the paper's); the initial model scores accuracy "
        f"{m['eval']['accuracy']:.3f}, reward {m['eval']['mean_reward']:.3f}.", "",
        f"| comparison | side | samples/s, loop | samples/s, median step | peak RSS MB | "
        f"train reward, last {a['last']} steps (± s.e.) | held-out accuracy | held-out reward | loop s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for comp in report["comparisons"]:
        title = f"{comp['title']}, {comp['steps']} steps x {a['samples_per_step']}"
        for key, name in (("progrl", "progrl"), ("trl", comp["trl_name"])):
            s = comp[key]
            ev = s["eval"]
            lines.append(f"| {title} | {name} | {s['samples_per_s']:.1f} | {s['steady_samples_per_s']:.1f} | "
                         f"{s['peak_rss_mb']:.0f} | {s['reward_last']:.3f} ± {s['reward_last_se']:.3f} | "
                         f"{ev['accuracy']:.3f} | {ev['mean_reward']:.3f} | {s['loop_s']:.1f} |")
        if comp.get("progrl_bf16"):
            s = comp["progrl_bf16"]
            ev = s["eval"]
            lines.append(f"| {title} | progrl, bf16 autocast (`model.precision = \"bf16\"`) | {s['samples_per_s']:.1f} | "
                         f"{s['steady_samples_per_s']:.1f} | {s['peak_rss_mb']:.0f} | {s['reward_last']:.3f} ± "
                         f"{s['reward_last_se']:.3f} | {ev['accuracy']:.3f} | {ev['mean_reward']:.3f} | {s['loop_s']:.1f} |")
        for dtype, f in comp.get("floor", {}).items():
            lines.append(f"| {title} | model-work floor, {dtype} (the model passes only, no RL code) | "
                         f"{f['samples_per_s']:.1f} | {f['steady_samples_per_s']:.1f} | {f['peak_rss_mb']:.0f} | - | - | - "
                         f"| {f['loop_s']:.1f} |")
        rt = comp["ratios"]
        lines.append(f"| {title} | **progrl / TRL** | **{rt['throughput']:.2f}x** | **{rt['throughput_steady']:.2f}x** | "
                     f"**{rt['memory']:.2f}x** | {rt['reward_diff']:+.3f} ± {rt['reward_diff_se']:.3f} | "
                     f"{rt['accuracy_diff']:+.3f} ± {rt['accuracy_diff_se']:.3f} | {rt['eval_reward_diff']:+.3f} | |")
    lines += ["", "Goals from the issue, as measured in this run (a reward difference counts as a difference when it "
              "exceeds twice its standard error; one seed per side):", ""]

    def verdict(diff: float, se: float) -> str:
        return "better" if diff > 2 * se else "worse" if diff < -2 * se else "equal within noise"

    for comp in report["comparisons"]:
        rt = comp["ratios"]
        met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
        speed = min(rt["throughput"], rt["throughput_steady"])
        rewards = (verdict(rt["reward_diff"], rt["reward_diff_se"]),
                   verdict(rt["accuracy_diff"], rt["accuracy_diff_se"]))
        lines.append(f"- {comp['title']}: throughput {rt['throughput']:.2f}x over the loop, "
                     f"{rt['throughput_steady']:.2f}x per median step (goal >= {comp['goal']:g}x: "
                     f"{met(speed >= comp['goal'])}); peak memory {rt['memory']:.2f}x (goal <= 1x: "
                     f"{met(rt['memory'] <= 1.0)}); reward per sample: training reward {rewards[0]}, held-out "
                     f"accuracy {rewards[1]} (goal: equal or better: {met('worse' not in rewards)}).")
        floor = comp.get("floor", {})
        if floor:
            trl_sps = comp["trl"]["samples_per_s"]
            parts = [f"{dtype} {f['samples_per_s'] / trl_sps:.2f}x" for dtype, f in floor.items()]
            ours = comp["progrl"]["samples_per_s"] / floor["float32"]["samples_per_s"]
            lines.append(f"  Ceiling for any implementation of these passes (model-work floor / TRL, loop "
                         f"samples/s): {', '.join(parts)}; progrl runs at {ours:.2f}x the float32 floor.")
            b = comp.get("progrl_bf16")
            if b and "bfloat16" in floor:
                lines.append(f"  progrl under bf16 autocast: {b['samples_per_s'] / trl_sps:.2f}x classic TRL (fp32), "
                             f"{b['samples_per_s'] / floor['bfloat16']['samples_per_s']:.2f}x the bfloat16 floor "
                             f"({b['samples_per_s'] / comp['progrl']['samples_per_s']:.2f}x progrl in float32).")
    lines += ["", *report.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grpo-steps", type=int, default=40, help="RL steps per side, GRPO comparison")
    p.add_argument("--ppo-steps", type=int, default=30, help="RL steps per side, PPO comparison")
    p.add_argument("--repeats", type=int, default=2, help="runs per side (alternating); the best throughput counts")
    p.add_argument("--samples-per-step", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads of every side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warm-start", type=int, default=256, help="warm-start examples (0: none)")
    p.add_argument("--warm-start-epochs", type=int, default=20)
    p.add_argument("--eval-prompts", type=int, default=512)
    p.add_argument("--last", type=int, default=10, help="steps averaged for the training reward")
    p.add_argument("--only", choices=["grpo", "ppo", "all"], default="all")
    p.add_argument("--no-floor", dest="floor", action="store_false",
                   help="skip the PPO model-work floor (floor_side.py, fp32 and bf16)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="skip the PPO side of progrl under bf16 autocast (model.precision = \"bf16\")")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "compare_trl"))
    p.add_argument("--venvs", default=str(ROOT / "bench" / "out"), help="where the TRL virtual environments live")
    p.add_argument("--markdown", help="write the table into this markdown file (section '## progrl vs TRL')")
    p.add_argument("--from-report", action="store_true",
                   help="run nothing: re-render the table from OUT/report.json (e.g. into --markdown)")
    args = p.parse_args(argv)
    if args.from_report:
        report = json.loads((Path(args.out) / "report.json").read_text())
        report["notes"] = NOTES
        benchdoc.publish(markdown(report), "progrl vs TRL", args.markdown)
        return 0
    start = time.time()
    load_before = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    venv_root = Path(args.venvs)

    pythons = {"progrl": Path(sys.executable)}
    if args.only in ("grpo", "all"):
        pythons["venv-trl"] = ensure_venv(venv_root, "venv-trl")
    if args.only in ("ppo", "all"):
        pythons["venv-trl011"] = ensure_venv(venv_root, "venv-trl011")
    versions = {"progrl": package_versions(pythons["progrl"], ["progrl", "torch", "transformers"])}
    for name in ("venv-trl", "venv-trl011"):
        if name in pythons:
            versions[name] = package_versions(pythons[name], ["trl", "torch", "transformers"])
        else:
            versions[name] = {"trl": "-", "transformers": "-", "torch": "-"}

    model_dir = out / "initial-model"
    model_info = build_initial_model(model_dir, args)
    model_info["eval"] = evaluate(str(model_dir), args.eval_prompts, args.threads, out / "initial-eval")
    say(f"initial model: held-out accuracy {model_info['eval']['accuracy']:.3f}, "
        f"reward {model_info['eval']['mean_reward']:.3f}")
    base = {"model_dir": str(model_dir), "seed": args.seed, "threads": args.threads,
            "samples_per_step": args.samples_per_step, "banned_tokens": BANNED}

    comparisons = []
    specs = []
    if args.only in ("grpo", "all"):
        G = GRPO_HPARAMS["num_generations"]
        plan = {**base, "algo": "grpo", "steps": args.grpo_steps, "hparams": GRPO_HPARAMS,
                "records": step_records(args.samples_per_step // G, args.grpo_steps, args.seed)}
        specs.append(("(a) GRPO, G=8", "TRL GRPOTrainer " + versions["venv-trl"]["trl"], plan,
                      ("progrl", "progrl_side.py"), ("venv-trl", "trl_grpo_side.py"), 2.0))
    if args.only in ("ppo", "all"):
        plan = {**base, "algo": "ppo", "steps": args.ppo_steps, "hparams": PPO_HPARAMS,
                "records": step_records(args.samples_per_step, args.ppo_steps, args.seed)}
        specs.append(("(b) PPO, 4 epochs", "TRL PPOTrainer " + versions["venv-trl011"]["trl"], plan,
                      ("progrl", "progrl_side.py"), ("venv-trl011", "trl_ppo_side.py"), 5.0))

    for title, trl_name, plan, ours, theirs, goal in specs:
        tag = plan["algo"]
        runs = {"progrl": [], "trl": []}
        for rep in range(args.repeats):  # alternate the sides so that both see the same machine load
            sfx = f"-r{rep}" if rep else ""
            runs["progrl"].append(run_side(pythons[ours[0]], ours[1], plan, out / f"{tag}-progrl{sfx}",
                                           f"{tag} progrl (run {rep + 1}/{args.repeats})"))
            runs["trl"].append(run_side(pythons[theirs[0]], theirs[1], plan, out / f"{tag}-trl{sfx}",
                                        f"{tag} {trl_name} (run {rep + 1}/{args.repeats})"))
        res_p, res_t = combine(runs["progrl"]), combine(runs["trl"])
        bf16 = None
        if tag == "ppo" and args.bf16:  # progrl under bf16 autocast, against the bf16 floor
            bf16_runs = [run_side(pythons[ours[0]], ours[1], {**plan, "precision": "bf16"},
                                  out / f"{tag}-progrl-bf16" / f"r{rep}",
                                  f"{tag} progrl, bf16 autocast (run {rep + 1}/{args.repeats})")
                         for rep in range(args.repeats)]
            bf16 = combine(bf16_runs)
        floors = {}
        if tag == "ppo" and args.floor:  # the model passes alone: the ceiling of any implementation
            for dtype in ("float32", "bfloat16"):
                floor_runs = [run_side(pythons["progrl"], "floor_side.py", {**plan, "dtype": dtype},
                                       out / f"{tag}-floor-{dtype}" / f"r{rep}", f"{tag} model-work floor, {dtype} "
                                       f"(run {rep + 1}/{args.repeats})") for rep in range(args.repeats)]
                best = combine(floor_runs)
                floors[dtype] = {"samples_per_s": best["samples_per_s"],
                                 "steady_samples_per_s": best["steady_samples_per_s"],
                                 "peak_rss_mb": best["peak_rss_mb"], "loop_s": best["loop_s"]}
        for res, label in ((res_p, "progrl"), (res_t, "trl"), (bf16, "progrl-bf16")):
            if res is None:
                continue
            res["eval"] = evaluate(res["final_model"], args.eval_prompts, args.threads, out / f"{tag}-{label}" / "eval")
            say(f"{tag} {label}: held-out accuracy {res['eval']['accuracy']:.3f}, reward {res['eval']['mean_reward']:.3f}")
        sp, st = summarise(res_p, args.last), summarise(res_t, args.last)
        comparisons.append({
            "title": title, "trl_name": trl_name, "goal": goal, "progrl": sp, "trl": st, "steps": plan["steps"],
            "ratios": {"throughput": sp["samples_per_s"] / st["samples_per_s"],
                       "throughput_steady": sp["steady_samples_per_s"] / st["steady_samples_per_s"],
                       "throughput_cpu": sp["samples_per_cpu_s"] / st["samples_per_cpu_s"],
                       "reward_diff_se": math.hypot(sp["reward_last_se"], st["reward_last_se"]),
                       "accuracy_diff_se": math.sqrt(sum(x["eval"]["accuracy"] * (1 - x["eval"]["accuracy"])
                                                         for x in (sp, st)) / args.eval_prompts),
                       "memory": sp["peak_rss_mb"] / st["peak_rss_mb"],
                       "reward_diff": sp["reward_last"] - st["reward_last"],
                       "accuracy_diff": sp["eval"]["accuracy"] - st["eval"]["accuracy"],
                       "eval_reward_diff": sp["eval"]["mean_reward"] - st["eval"]["mean_reward"]},
            "raw": runs, "floor": floors, **({"progrl_bf16": summarise(bf16, args.last)} if bf16 else {}),
        })

    cmd = "python bench/compare_trl/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    report = {"args": vars(args), "command": cmd.replace(f" --markdown {args.markdown}", "") if args.markdown else cmd,
              "machine": f"{os.cpu_count()}-core {platform.processor() or platform.machine()} CPU "
                         f"({benchdoc.cpu_model()}), Linux",
              "versions": versions, "model": model_info, "comparisons": comparisons,
              "minutes": (time.time() - start) / 60, "load_before": load_before, "notes": NOTES}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    benchdoc.publish(markdown(report), "progrl vs TRL", args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
