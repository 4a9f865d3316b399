"""Task plug-ins: a task in a file outside the package, and tasks registered by installed packages
(the ``progrl.tasks`` entry-point group), train, resume and evaluate."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

import pytest

import progrl.tasks as registry
from progrl.cli import main
from progrl.config import ConfigError, read_toml
from progrl.tracking import read_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import make_model_dir  # noqa: E402

PLUGIN = '''
from pydantic import BaseModel, ConfigDict, Field

from progrl.tasks.base import Task


def letter_reward(prompts, completions, letter, **kwargs):
    return [c.count(x) / 3 for c, x in zip(completions, letter)]


class LetterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    letters: str = Field("ab", description="letters to ask for")


class LetterTask(Task):
    name = "letters"
    summary = "say the letter you are asked for"
    Options = LetterOptions

    def train_records(self, n, seed, step):
        return [{"prompt": f"say {self.options.letters[(step + i) % len(self.options.letters)]}:",
                 "letter": self.options.letters[(step + i) % len(self.options.letters)]} for i in range(n)]

    def eval_records(self, n, seed):
        return self.train_records(n, seed, 0)

    def reward_functions(self):
        # named by file so that reward worker processes can import it too
        return [(__file__ + ":letter_reward", 1.0)]

    def metrics(self, records, completions, rewards):
        return {"perfect": sum(r == 1.0 for r in rewards) / len(rewards)}
'''


def tiny_args(model: Path) -> list[str]:
    return ["--model", str(model), "--set", "rollout.max_new_tokens=3", "--set", "rollout.batch_size=4",
            "--set", "rollout.num_generations=2", "--set", "algo.estimator='grpo'", "--set", "algo.minibatch_size=8",
            "--set", "algo.epochs=1", "--set", "algo.lr=1e-3", "--set", "eval.n_prompts=4", "--set", "sft.examples=0",
            "--set", "log.progress=false", "--set", "log.report_to=[]", "--set", "log.plot=false",
            "--set", "log.checkpoint_every=2", "--set", "threads=1"]


def train_rows(run):
    skip = {"samples_per_s", "tokens_per_s", "time_generation", "time_reward", "time_update"}
    return [{k: v for k, v in r.items() if k not in skip} for r in read_jsonl(run / "metrics.jsonl")
            if r["phase"] == "train"]


def test_a_task_in_a_file_trains_resumes_and_evaluates(tmp_path, monkeypatch, capsys):
    """What it must show #4."""
    plugin_dir = tmp_path / "elsewhere"
    plugin_dir.mkdir()
    (plugin_dir / "letters.py").write_text(PLUGIN)
    model = make_model_dir(tmp_path / "model")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the task is named relative to this directory
    full, cut = tmp_path / "full", tmp_path / "cut"
    ref = "../elsewhere/letters.py:LetterTask"
    assert main(["train", ref, "--steps", "4", "--out", str(full), *tiny_args(model)]) == 0
    # the run directory records where the task is, absolutely
    assert read_toml(full / "config.toml")["task"] == f"{plugin_dir / 'letters.py'}:LetterTask"

    from progrl.trainer import Trainer

    original = Trainer.rl_step

    def interrupted(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(Trainer, "rl_step", interrupted)
    assert main(["train", ref, "--steps", "4", "--out", str(cut), *tiny_args(model)]) == 130
    monkeypatch.setattr(Trainer, "rl_step", original)
    monkeypatch.chdir(tmp_path)  # resume and eval from another directory
    assert main(["train", f"{plugin_dir}/letters.py:LetterTask", "--resume", str(cut)]) == 0
    assert train_rows(cut) == train_rows(full)  # the resumed run repeats the uninterrupted one
    capsys.readouterr()
    assert main(["eval", str(cut), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    final = [r for r in read_jsonl(cut / "metrics.jsonl") if r["phase"] == "eval"][-1]
    assert metrics["mean_reward"] == pytest.approx(final["mean_reward"])
    assert metrics["perfect"] == pytest.approx(final["perfect"])

    # `progrl tasks FILE:Class` lists it with its options
    assert main(["tasks", str(plugin_dir / "letters.py") + ":LetterTask"]) == 0
    out = capsys.readouterr().out
    assert "say the letter you are asked for" in out and "letters: str = 'ab'  -- letters to ask for" in out


def test_entry_point_plugins_are_found_and_listed(tmp_path, monkeypatch, capsys):
    (tmp_path / "letters_pkg.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [metadata.EntryPoint(name="letters", value="letters_pkg:LetterTask", group="progrl.tasks")]
    monkeypatch.setattr(registry.metadata, "entry_points",
                        lambda group=None: [e for e in eps if e.group == group])
    assert registry.task_class("letters").summary == "say the letter you are asked for"
    assert registry.get_task("letters", {"letters": "xyz"}).options.letters == "xyz"
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "letters" in out and "plug-in letters_pkg:LetterTask" in out and "dataset" in out
    # a run of an entry-point task records just its name
    model = make_model_dir(tmp_path / "model")
    assert main(["train", "letters", "--steps", "1", "--out", str(tmp_path / "r"), *tiny_args(model)]) == 0
    assert read_toml(tmp_path / "r" / "config.toml")["task"] == "letters"


def test_bad_task_references_are_one_line(tmp_path, capsys):
    (tmp_path / "notask.py").write_text("class Thing:\n    pass\n")
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    for ref, msg in [(f"{tmp_path}/missing.py:T", "file not found"),
                     (f"{tmp_path}/notask.py:Thing", "not a subclass of progrl.tasks.base.Task"),
                     (f"{tmp_path}/notask.py:Nope", "has no attribute 'Nope'"),
                     (f"{tmp_path}/broken.py:T", "RuntimeError: boom"),
                     ("no_such_module_xyz:T", "cannot import"),
                     ("nosuchtask", "unknown task 'nosuchtask'")]:
        with pytest.raises(ConfigError, match=msg):
            registry.task_class(ref)
        assert main(["train", ref, "--steps", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg.split("'")[0] in err[0], (ref, err)
