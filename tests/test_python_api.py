"""The Python API of docs/python-api.md: configs from keywords or TOML, training on rows with reward
callables or on a task object, evaluating, resuming and loading the model -- no CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import progrl
from progrl.config import ConfigError
from progrl.tracking import read_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import make_model_dir  # noqa: E402

QUIET = {"log": {"progress": False, "report_to": [], "plot": False, "checkpoint_every": 2}, "threads": 1}


def match(completions, target, **kwargs):
    """How often the row's target letter appears in the completion (a plain string here)."""
    return [c.count(t) / 4 for c, t in zip(completions, target)]


def test_make_config_from_keywords_toml_and_dotted_keys(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('steps = 7\n[algo]\nlr = 0.001\n[rollout]\nmax_new_tokens = 3\n')
    cfg = progrl.make_config(toml, task="arithmetic", model="some/model", rollout={"batch_size": 4},
                             **{"algo.epochs": 2})
    assert (cfg.steps, cfg.algo.lr, cfg.algo.epochs, cfg.rollout.batch_size) == (7, 1e-3, 2, 4)
    assert cfg.rollout.max_new_tokens == 3 and cfg.model.name == "some/model"
    assert cfg.sft.examples == 256  # the arithmetic task's own default
    with pytest.raises(ConfigError, match=r"algo.lr: Input should be a valid number"):
        progrl.make_config(algo={"lr": "fast"})
    with pytest.raises(ConfigError, match=r"rollout.bogus: unknown field"):
        progrl.make_config(**{"rollout.bogus": 1})


def test_train_on_rows_with_a_reward_callable_then_evaluate_resume_and_load(tmp_path):
    rows = [{"prompt": f"say {t}", "target": t} for t in "ab" for _ in range(20)]
    model = make_model_dir(tmp_path / "model", chars="abcdefghsy <>:x")
    common = dict(dataset=rows, eval_dataset=rows[:8], rewards=[match], model=str(model),
                  task_options={"system_prompt": "x"}, reward={"backend": "inline"},
                  rollout={"max_new_tokens": 4, "batch_size": 8, "num_generations": 4},
                  algo={"lr": 3e-3, "epochs": 2, "minibatch_size": 16}, verbose=False, **QUIET)
    run = progrl.train(out=tmp_path / "run", steps=4, **common)
    assert isinstance(run, progrl.Run) and (run.run_dir / "final" / "config.json").exists()
    assert [r["step"] for r in run.metrics()] == [1, 2, 3, 4]
    assert all("rewards/match/mean" in r for r in run.metrics())
    assert {s["step"] for s in run.eval_samples()} == {0, 4} and len(run.eval_samples()) == 16
    assert set(run.eval_after) >= {"mean_reward", "rewards/match/mean"}
    # in-memory rows and callables cannot be named in config.toml: evaluate takes them again
    again = progrl.evaluate(run.run_dir, task=progrl.DatasetTask(rows=rows, eval_rows=rows[:8]), rewards=[match])
    assert again["mean_reward"] == pytest.approx(run.eval_after["mean_reward"])
    lm, tok = progrl.load_model(run.run_dir)
    assert lm.config.vocab_size == len(tok) and tok.chat_template

    # resume a run to more steps (config and task as before; the callables are given again)
    cont = progrl.train(out=tmp_path / "run", resume=True, steps=6, rewards=[match],
                        task=progrl.DatasetTask(rows=rows, eval_rows=rows[:8]), verbose=False)
    assert [r["step"] for r in cont.metrics()] == [1, 2, 3, 4, 5, 6]


def test_train_a_task_object_and_evaluate_from_the_run_directory_alone(tmp_path):
    from progrl.tasks import get_task

    task = get_task("arithmetic")
    run = progrl.train(task=task, out=tmp_path / "arith", steps=2, verbose=False,
                       model={"n_layer": 1, "n_embd": 32, "n_head": 2}, sft={"examples": 16, "epochs": 1},
                       rollout={"batch_size": 8}, algo={"minibatch_size": 8, "epochs": 1}, eval={"n_prompts": 16},
                       **QUIET)
    assert run.config.task == "arithmetic"
    metrics = progrl.evaluate(run.run_dir)  # the task is found again from config.toml
    assert metrics["accuracy"] == pytest.approx(run.eval_after["accuracy"])
    final_eval = [r for r in read_jsonl(run.run_dir / "metrics.jsonl") if r["phase"] == "eval"][-1]
    assert final_eval["mean_reward"] == pytest.approx(metrics["mean_reward"])


def test_notebook_callables_default_to_the_inline_backend(tmp_path, monkeypatch):
    import progrl.api as api
    from progrl.trainer import Trainer

    def from_notebook(completions, **kw):
        return [0.0] * len(completions)

    from_notebook.__module__ = "__main__"
    seen = {}
    monkeypatch.setattr(Trainer, "train", lambda self, resume=False: seen.setdefault("cfg", self.cfg) and {})
    model = make_model_dir(tmp_path / "model")
    api.train(dataset=[{"prompt": "a"}, {"prompt": "b"}], rewards=[from_notebook], model=str(model),
              out=tmp_path / "nb", verbose=False, **QUIET)
    assert seen["cfg"].reward.backend == "inline"
    with pytest.raises(ConfigError, match="either callables or 'file.py:function' names"):
        api.train(dataset=[{"prompt": "a"}], rewards=[from_notebook, "x.py:f"], out=tmp_path / "x")
