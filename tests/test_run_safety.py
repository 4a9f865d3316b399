"""A run never loses or mixes its data, through the CLI (issue 9, items 5-9 and the small things).

One finished 4-step run (checkpoints every 2 steps) is made once per module; tests work on
copies of it. Interrupted runs are resumed and compared with it bit for bit (CPU).
"""

from __future__ import annotations

import builtins
import errno
import json
import math
import os
import shutil

import pytest
import torch

from progrl import checkpoint as ckpt
from progrl.cli import main
from progrl.tracking import read_jsonl

TINY = [
    "--set", "model.n_layer=1", "--set", "model.n_embd=32", "--set", "model.n_head=2",
    "--set", "sft.examples=16", "--set", "sft.epochs=2",
    "--set", "rollout.batch_size=16", "--set", "algo.minibatch_size=8", "--set", "algo.epochs=2",
    "--set", "eval.n_prompts=32", "--set", "log.progress=false", "--set", "log.checkpoint_every=2",
    "--set", "log.tensorboard=false", "--set", "log.plot=false", "--set", "threads=1",
    "--set", "algo.lr=1e-3", "--set", "algo.kl_coef=0.05", "--set", "algo.batch_entropy_coef=0.1",
]
TIMING = {"samples_per_s", "tokens_per_s", "time_generation", "time_reward", "time_update"}


class Killed(BaseException):
    """A kill -9 stand-in: nothing in progrl catches it, so no cleanup runs."""


def rows(run, phase="train"):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in read_jsonl(run / "metrics.jsonl") if r["phase"] == phase]


def same_rows(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            va, vb = ra[k], rb[k]
            assert va == vb or (isinstance(va, float) and math.isnan(va) and math.isnan(vb)), (ra["step"], k, va, vb)


def assert_reproduces(run, reference):
    same_rows(rows(reference), rows(run))
    ev_a, ev_b = rows(reference, "eval")[-1], rows(run, "eval")[-1]
    assert (ev_a["accuracy"], ev_a["mean_reward"]) == (ev_b["accuracy"], ev_b["mean_reward"])
    assert (run / "final" / "config.json").exists()


def one_line_error(capsys, alone=True):
    """The error line on stderr: the only line (an error before the run starts), or, with
    ``alone=False``, the last one after the run's progress lines. Never a traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    if alone:
        assert len(lines) == 1, err
    return lines[-1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run, and the steps its checkpoints were saved at."""
    run = tmp_path_factory.mktemp("finished") / "run"
    saved = []
    real = ckpt.save_checkpoint
    with pytest.MonkeyPatch.context() as m:
        m.setattr(ckpt, "save_checkpoint", lambda run_dir, step, **kw: saved.append(step) or real(run_dir, step, **kw))
        assert main(["train", "arithmetic", "--steps", "4", "--out", str(run), *TINY]) == 0
    return run, saved


@pytest.fixture
def copy_of(finished, tmp_path):
    def make(name="run"):
        dst = tmp_path / name
        shutil.copytree(finished[0], dst)
        return dst
    return make


# ----------------------------------------------------------------------------- item 5


def test_the_end_of_run_save_does_not_rewrite_the_step_just_checkpointed(finished):
    run, saved = finished
    assert saved == [2, 4]  # steps is a multiple of checkpoint_every: no third save of step 4
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "reference.pt", "step-000004"]


def test_kill_while_exporting_the_final_model_then_resume(finished, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = os.replace

    def replace(src, dst, **kw):
        if os.path.basename(dst) == "final":
            raise Killed
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        main(["train", "arithmetic", "--steps", "4", "--out", str(run), *TINY])
    monkeypatch.setattr(os, "replace", real)
    assert not (run / "final").exists() and ckpt.latest_checkpoint(run).name == "step-000004"
    assert main(["train", "arithmetic", "--resume", str(run)]) == 0
    assert_reproduces(run, finished[0])
    assert not (run / ".final.tmp").exists()


KILLER = """
import os, signal, sys
real = os.replace
def replace(src, dst, **kw):
    if os.path.basename(str(src)) == ".tmp-step-000004":
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9, just before the new checkpoint is in place
    return real(src, dst, **kw)
os.replace = replace
from progrl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_real_kill_9_inside_the_last_checkpoint_save_then_resume_reproduces(finished, tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), "train", "arithmetic", "--steps", "4", "--out", str(run),
                           *TINY], capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ".tmp-step-000004" in names and "step-000002" in names and not (run / "final").exists()
    assert main(["train", "arithmetic", "--resume", str(run)]) == 0
    assert_reproduces(run, finished[0])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "reference.pt", "step-000004"]


# ----------------------------------------------------------------------------- item 7


def test_disk_full_at_a_checkpoint_says_so_keeps_the_previous_one_and_resume_reproduces(finished, tmp_path,
                                                                                          monkeypatch, capsys):
    run = tmp_path / "run"
    real = torch.save
    calls = []

    def save(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) == 5:  # reference.pt, step 2's three files, then the first file of step 4
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    capsys.readouterr()
    assert main(["train", "arithmetic", "--steps", "4", "--out", str(run), *TINY]) == 2
    line = one_line_error(capsys, alone=False)
    assert line.startswith("no space left on device: could not write ") and "step-000004" in line
    assert "kept the previous checkpoint" in line and "step-000002" in line and f"--resume {run}`" in line
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest", "reference.pt", "step-000002"]  # the partial .tmp-step-000004 is gone
    monkeypatch.setattr(torch, "save", real)
    assert main(["train", "arithmetic", "--resume", str(run)]) == 0
    assert_reproduces(run, finished[0])


def test_disk_full_while_appending_metrics_leaves_no_half_line(finished, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_open = builtins.open

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[:len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            return False

    def open_(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if str(file).endswith("metrics.jsonl") and "a" in mode and len(read_jsonl(file)) == 4:
            return FullFile(f)  # the row of step 3 (after eval, step 1, step 2)
        return f

    monkeypatch.setattr(builtins, "open", open_)
    capsys.readouterr()
    assert main(["train", "arithmetic", "--steps", "4", "--out", str(run), *TINY]) == 2
    line = one_line_error(capsys, alone=False)
    assert line.startswith(f"no space left on device: could not write {run / 'metrics.jsonl'}")
    monkeypatch.setattr(builtins, "open", real_open)
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(x) for x in text.splitlines())  # no half-written row
    assert main(["train", "arithmetic", "--resume", str(run)]) == 0
    assert_reproduces(run, finished[0])


def test_disk_full_while_exporting_keeps_the_old_final_and_removes_the_partial(tmp_path, monkeypatch):
    from progrl.modeling import build_causal_lm_from_config
    from progrl.policy import Policy
    from progrl.storage import StorageError
    from progrl.tasks import arithmetic_core as core
    from progrl.trainer import export_final

    tok = core.build_tokenizer()
    lm = build_causal_lm_from_config("gpt2", len(tok), n_layer=1, n_embd=16, n_head=2, n_positions=32,
                                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id, seed=0)
    policy = Policy(lm, value_head=True)
    export_final(tmp_path, policy, tok)
    before = sorted(p.name for p in (tmp_path / "final").iterdir())

    class SafetensorError(Exception):  # what safetensors raises on a full disk
        pass

    def full(*a, **kw):
        os.makedirs(tmp_path / ".final.tmp", exist_ok=True)
        (tmp_path / ".final.tmp" / "model.safetensors").write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(type(lm), "save_pretrained", full)
    with pytest.raises(StorageError, match=r"^no space left on device: could not write .*final; the checkpoint"):
        export_final(tmp_path, policy, tok)
    assert not (tmp_path / ".final.tmp").exists()
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == before


# ----------------------------------------------------------------------------- item 6


def test_reusing_a_run_directory_without_resume_is_refused(copy_of, capsys):
    run = copy_of()
    metrics = (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["train", "arithmetic", "--steps", "2", "--out", str(run), *TINY]) == 2
    line = one_line_error(capsys)
    assert f"--out: {run} is not empty" in line and "--resume" in line and "--overwrite" in line
    assert (run / "metrics.jsonl").read_bytes() == metrics and ckpt.latest_checkpoint(run).name == "step-000004"
    assert main(["sft", "arithmetic", "--out", str(run), *TINY]) == 2
    assert "is not empty" in one_line_error(capsys)


def test_overwrite_replaces_a_run_and_only_a_run(copy_of, tmp_path, capsys):
    run = copy_of()
    assert main(["train", "arithmetic", "--steps", "1", "--out", str(run), "--overwrite", *TINY]) == 0
    assert [r["step"] for r in rows(run)] == [1]  # the old run's rows are gone, not mixed in
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "reference.pt", "step-000001"]
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["train", "arithmetic", "--out", str(other), "--overwrite", *TINY]) == 2
    assert "does not hold a progrl run" in one_line_error(capsys)
    assert (other / "notes.txt").read_text() == "keep me"
    assert main(["train", "arithmetic", "--resume", str(run), "--overwrite"]) == 2
    assert "choose one" in one_line_error(capsys)


def test_the_trainer_itself_refuses_a_directory_that_holds_a_run(copy_of):
    from progrl.config import ConfigError, TrainConfig, read_toml
    from progrl.tasks import get_task
    from progrl.trainer import Trainer

    run = copy_of()
    cfg = TrainConfig.model_validate(read_toml(run / "config.toml"))
    trainer = Trainer(cfg, get_task("arithmetic"), run)
    with pytest.raises(ConfigError, match="already holds a run"):
        trainer.train()


# ----------------------------------------------------------------------------- item 8


@pytest.mark.parametrize("argv, field", [
    (["--set", "algo.lr=0.5"], "algo.lr"),
    (["--seed", "7"], "seed"),
    (["--model", "smollm2-135m"], "model.name"),
    (["--set", "task_options.reward_scale=3.0"], "task_options.reward_scale"),  # the default is 10
    (["--set", "rollout.batch_size=8", "--set", "algo.epochs=1"], "rollout.batch_size"),
])
def test_resume_refuses_changes_that_would_make_another_run(finished, capsys, argv, field):
    run = finished[0]
    capsys.readouterr()
    assert main(["train", "arithmetic", "--resume", str(run), *argv]) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"config error: {field}: cannot change when resuming"), line
    if "algo.epochs=1" in argv:
        assert "(also algo.epochs)" in line


def test_resume_refuses_another_task_another_out_and_a_differing_config_file(finished, tmp_path, capsys):
    run = finished[0]
    capsys.readouterr()
    assert main(["train", "sentiment", "--resume", str(run)]) == 2
    line = one_line_error(capsys)
    assert "is a 'arithmetic' run, not 'sentiment'" in line and f"progrl train arithmetic --resume {run}" in line
    assert main(["train", "arithmetic", "--resume", str(run), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "--out: a resumed run stays in its own directory" in one_line_error(capsys)
    conf = tmp_path / "c.toml"
    conf.write_text("[algo]\nlr = 0.001\nclip_range = 0.3\n")  # lr as in the run, clip_range not
    assert main(["train", "arithmetic", "--resume", str(run), "--config", str(conf)]) == 2
    assert one_line_error(capsys).startswith("config error: algo.clip_range: cannot change when resuming")


def test_resume_accepts_steps_and_logging_changes(copy_of):
    run = copy_of()
    assert main(["train", "arithmetic", "--resume", str(run), "--steps", "5", "--set", "log.checkpoint_every=1",
                 "--set", "log.samples_per_step=0", "--set", "eval.every=0", "--set", "threads=1"]) == 0
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4, 5]
    assert ckpt.latest_checkpoint(run).name == "step-000005"
    assert max(r["step"] for r in read_jsonl(run / "samples.jsonl")) == 4  # no samples logged for step 5


def test_resume_conflicts_is_a_pure_comparison():
    from progrl.config import TrainConfig, resume_conflicts

    saved = TrainConfig(steps=10, out="a")
    asked = TrainConfig.model_validate({"steps": 20, "out": "b", "log": {"progress": False}, "device": "cpu",
                                        "algo": {"lr": 0.5}, "task_options": {"x": 1}})
    assert resume_conflicts(saved, asked) == [("algo.lr", 1.41e-5, 0.5), ("task_options.x", None, 1)]
    assert resume_conflicts(saved, saved) == []
    # a run stopped by a failing reward can be resumed with the rule relaxed; the reward itself cannot change
    relaxed = TrainConfig.model_validate({"steps": 10, "reward": {"max_failure_fraction": "never",
                                                                  "load_timeout": 60, "timeout": 3}})
    assert [k for k, _, _ in resume_conflicts(saved, relaxed)] == ["reward.timeout"]


# ----------------------------------------------------------------------------- item 9


def test_eval_of_a_truncated_checkpoint_is_one_line_naming_the_file(copy_of, capsys):
    run = copy_of()
    shutil.rmtree(run / "final")
    policy = run / "checkpoints" / "step-000004" / "policy.pt"
    policy.write_bytes(policy.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    line = one_line_error(capsys)
    assert f"checkpoint file {policy} is damaged or truncated" in line
    policy.write_bytes(b"not a torch file at all")
    assert main(["eval", str(run)]) == 2
    assert "is damaged or truncated" in one_line_error(capsys)


def test_malformed_state_json_is_one_line_naming_the_file(copy_of, capsys):
    run = copy_of()
    shutil.rmtree(run / "final")
    state = run / "checkpoints" / "step-000004" / "state.json"
    state.write_text('{"step": 4, "kl": {"value"')
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    assert f"{state} is not valid JSON" in one_line_error(capsys)
    assert main(["train", "arithmetic", "--resume", str(run)]) == 2
    assert f"{state} is not valid JSON" in one_line_error(capsys)


def test_out_that_is_a_file_and_an_empty_model_folder_are_one_line(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    capsys.readouterr()
    assert main(["train", "arithmetic", "--out", str(f), *TINY]) == 2
    assert one_line_error(capsys) == f"config error: --out: {f} is an existing file, not a directory"
    empty = tmp_path / "empty-model"
    empty.mkdir()
    assert main(["train", "arithmetic", "--model", str(empty), "--out", str(tmp_path / "r"), *TINY]) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"model folder {empty} holds no model") and line.endswith("one .gguf file")


def test_cli_prints_a_multi_line_error_whole_on_one_line(monkeypatch, capsys):
    import progrl.cli as cli

    def boom(args):
        raise ValueError("could not instantiate the thing from one of:\n(1) a file,\n(2) another file.")

    monkeypatch.setattr(cli, "cmd_tasks", boom)
    assert main(["tasks"]) == 2
    assert one_line_error(capsys) == "could not instantiate the thing from one of: (1) a file, (2) another file."


# ----------------------------------------------------------------------------- small things


def test_version_and_sft_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == "progrl 0.1.0"
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    out = capsys.readouterr().out
    assert "--steps" not in out and "--overwrite" in out


def test_plain_progress_line_shows_rates_below_one(capsys):
    from progrl.config import TrainConfig
    from progrl.trainer import fmt_rate, progress_bar

    assert [fmt_rate(x) for x in (260.4, 42.37, 3.14159, 0.4237, 0.0031)] == ["260", "42.4", "3.14", "0.42", "0.0031"]
    with progress_bar(TrainConfig(steps=1), 0) as bar:
        bar.advance({"reward_mean": 0.5, "samples_per_s": 0.4237})
    assert "(0.42 samples/s)" in capsys.readouterr().err
