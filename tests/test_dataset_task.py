"""The `dataset` task: files in every format, columns reaching the rewards, chat prompts,
held-out splits, and a tiny model that learns from a JSONL file written here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from progrl.cli import main
from progrl.tasks import get_task
from progrl.tasks.dataset import DatasetTask, as_conversation
from progrl.tasks.dataset_io import DatasetError, load_rows
from progrl.tracking import read_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import make_model_dir, make_tokenizer  # noqa: E402

ROWS = [{"prompt": "say a", "target": "a", "n": 1}, {"prompt": "say b", "target": "b", "n": 2}]

REWARDS = '''
def _t(c):
    return c[0]["content"] if isinstance(c, list) else c

def match(completions, target, **kwargs):
    """How often the row's target letter appears among the 4 new characters."""
    return [_t(c).count(t) / 4 for c, t in zip(completions, target)]

def length(completions, **kwargs):
    return [float(len(_t(c))) for c in completions]
'''


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- reading


def test_every_file_format_gives_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    conv = [{"role": "user", "content": "say a"}]
    rows = [{"prompt": "say a", "target": "a"}, {"prompt": "say b", "target": "b"}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "cols.json").write_text(json.dumps({"prompt": ["say a", "say b"], "target": ["a", "b"]}))
    (tmp_path / "d.csv").write_text("prompt,target\nsay a,a\nsay b,b\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.json", "cols.json", "d.csv", "d.parquet"):
        assert load_rows(str(tmp_path / name)) == rows, name
    # a conversation in a CSV cell is JSON text, decoded into messages
    (tmp_path / "c.csv").write_text('prompt,target\n"' + json.dumps(conv).replace('"', '""') + '",a\n')
    assert load_rows(str(tmp_path / "c.csv")) == [{"prompt": conv, "target": "a"}]


def test_a_saved_datasets_folder_and_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                               "test": datasets.Dataset.from_list(ROWS[:1])})
    dd.save_to_disk(str(tmp_path / "ds"))
    task = get_task("dataset", {"path": str(tmp_path / "ds"), "eval_split": "test"})
    task.load()
    assert [r["target"] for r in task.train_records(4, 0, 1)].count("a") == 2
    assert [r["prompt"] for r in task.eval_records(10, 0)] == ["say a"]
    with pytest.raises(DatasetError, match="no split 'dev'"):
        load_rows(str(tmp_path / "ds"), "dev")


def test_bad_data_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n{"prompt": oops}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl line 2: invalid JSON"):
        load_rows(str(bad))
    with pytest.raises(DatasetError, match="dataset file not found"):
        load_rows(str(tmp_path / "missing.jsonl"))
    no_prompt = write_jsonl(tmp_path / "np.jsonl", [{"question": "x"}] * 3)
    with pytest.raises(DatasetError, match="no column 'prompt'.*prompt_column"):
        get_task("dataset", {"path": str(no_prompt)}).load()
    # through the CLI: one line, exit code 2
    model = make_model_dir(tmp_path / "m")
    capsys.readouterr()
    assert main(["train", "dataset", "--model", str(model), "--set", f"task_options.path={bad}",
                 "--set", "reward.functions=['x.py:f']", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "line 2: invalid JSON" in err[-1] and not any("Traceback" in line or "Loading" in line for line in err)
    assert main(["train", "dataset", "--set", "task_options.pth=x"]) == 2
    assert "task_options.pth: unknown field" in capsys.readouterr().err
    good = write_jsonl(tmp_path / "good.jsonl", ROWS * 3)
    assert main(["train", "dataset", "--model", str(model), "--set", f"task_options.path={good}",
                 "--out", str(tmp_path / "r2")]) == 2  # no reward named: before the model loads
    err = capsys.readouterr().err.strip().splitlines()
    assert "reward.functions: task 'dataset' has no reward of its own" in err[-1]
    assert not any("Loading" in line for line in err)


# ----------------------------------------------------------------------------- records


def test_columns_splits_and_order(tmp_path):
    rows = [{"prompt": f"p{i}", "answer": str(i), "completion": "reserved"} for i in range(20)]
    task = get_task("dataset", {"path": str(write_jsonl(tmp_path / "d.jsonl", rows)), "eval_fraction": 0.25})
    task.load()
    held = task.eval_records(100, 0)
    assert len(held) == 5  # a quarter held out, never repeated
    train_prompts = {r["prompt"] for r in task._train}
    assert not train_prompts & {r["prompt"] for r in held} and len(train_prompts) == 15
    # every column but the reserved names reaches the rewards
    assert set(held[0]) == {"prompt", "answer"}
    # one epoch = every training row once; a pure function of (seed, step)
    epoch = [r["prompt"] for step in (1, 2, 3) for r in task.train_records(5, seed=3, step=step)]
    assert sorted(epoch) == sorted(train_prompts)
    assert task.train_records(5, 3, 2) == task.train_records(5, 3, 2)
    assert task.train_records(5, 3, 2) != task.train_records(5, 4, 2)
    # the held-out draw depends on split_seed only
    again = get_task("dataset", {"path": str(tmp_path / "d.jsonl"), "eval_fraction": 0.25})
    assert again.eval_records(100, 7) == held
    # local paths are recorded absolute (eval and resume from any directory); ids stay as given
    assert get_task("dataset", {"path": "d.jsonl"}).options.path == "d.jsonl"
    import os
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert get_task("dataset", {"path": "d.jsonl"}).options.path == str(tmp_path / "d.jsonl")
    finally:
        os.chdir(cwd)
    # a second file as the held-out set
    other = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "held", "answer": "x"}])
    t2 = get_task("dataset", {"path": str(tmp_path / "d.jsonl"), "eval_path": str(other)})
    assert [r["prompt"] for r in t2.eval_records(10, 0)] == ["held"] and len(t2.train_records(20, 0, 1)) == 20


def test_chat_template_system_prompt_and_plain_text(tmp_path):
    path = str(write_jsonl(tmp_path / "d.jsonl", ROWS * 5))
    tok = make_tokenizer()
    conv_path = str(write_jsonl(tmp_path / "c.jsonl", [{"prompt": [{"role": "user", "content": "hi"}], "t": 1}] * 4))

    plain = get_task("dataset", {"path": path})
    plain.bind_tokenizer(tok)
    rec = plain.train_records(1, 0, 1)[0]
    assert isinstance(rec["prompt"], str) and plain.render_prompt(rec["prompt"]) == rec["prompt"]

    system = get_task("dataset", {"path": path, "system_prompt": "be brief"})
    system.bind_tokenizer(tok)
    rec = system.train_records(1, 0, 1)[0]
    assert rec["prompt"][0] == {"role": "system", "content": "be brief"} and rec["prompt"][1]["role"] == "user"
    assert system.render_prompt(rec["prompt"]).startswith("<s>be brief<u>say ")
    assert system.render_prompt(rec["prompt"]).endswith("<a>")  # the generation prompt

    conv = get_task("dataset", {"path": conv_path})
    conv.bind_tokenizer(tok)
    assert conv.render_prompt(conv.train_records(1, 0, 1)[0]["prompt"]) == "<u>hi<a>"

    no_chat = get_task("dataset", {"path": path, "system_prompt": "be brief", "chat_template": False})
    no_chat.bind_tokenizer(tok)
    assert no_chat.train_records(1, 0, 1)[0]["prompt"].startswith("be brief\n\nsay ")

    with pytest.raises(DatasetError, match="no chat template"):
        get_task("dataset", {"path": conv_path}).bind_tokenizer(make_tokenizer(chat=False))
    with pytest.raises(DatasetError, match="chat_template=false"):
        t = get_task("dataset", {"path": conv_path, "chat_template": False})
        t.bind_tokenizer(tok)
    assert as_conversation("x", "s", wrap_strings=True) == [{"role": "system", "content": "s"},
                                                            {"role": "user", "content": "x"}]


def test_answer_column_gives_warm_start_texts(tmp_path):
    rows = [{"prompt": "say a", "answer": "aaaa"}] * 4
    task = get_task("dataset", {"path": str(write_jsonl(tmp_path / "d.jsonl", rows)), "answer_column": "answer",
                                "system_prompt": "s", "eval_path": str(tmp_path / "d.jsonl")})
    task.bind_tokenizer(make_tokenizer())
    assert task.sft_texts(2, 0) == ["<s>s<u>say a<a>aaaa"] * 2
    assert task.defaults()["sft"]["examples"] == 256
    assert get_task("dataset", {"path": "x.jsonl"}).sft_texts(4, 0) == []


# ----------------------------------------------------------------------------- training


def test_tiny_model_learns_from_a_jsonl_file(tmp_path, capsys):
    """What it must show #1: the reward rises, the extra column reaches the reward, per-function
    means in metrics.jsonl, the held-out generations in eval_samples.jsonl."""
    (tmp_path / "rewards.py").write_text(REWARDS)
    data = write_jsonl(tmp_path / "data.jsonl", [{"prompt": f"say {t}", "target": t} for t in "ab" for _ in range(40)])
    model = make_model_dir(tmp_path / "model", chars="abcdefghsy <>:x")
    run = tmp_path / "run"
    rc = main(["train", "dataset", "--model", str(model), "--out", str(run), "--steps", "20",
               "--set", f"task_options.path={data}", "--set", 'task_options.system_prompt="x"',
               "--set", f'reward.functions=["{tmp_path}/rewards.py:match", {{fn="{tmp_path}/rewards.py:length", '
                        f'weight=0.0}}]',
               "--set", "reward.backend=inline", "--set", "rollout.max_new_tokens=4", "--set", "rollout.batch_size=8",
               "--set", "rollout.num_generations=4", "--set", "algo.lr=3e-3", "--set", "algo.epochs=2",
               "--set", "algo.minibatch_size=16", "--set", "eval.every=10", "--set", "log.progress=false",
               "--set", "log.plot=false", "--set", "log.checkpoint_every=0", "--set", "threads=1"])
    assert rc == 0
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["phase"] == "train"]
    first = sum(r["reward_mean"] for r in rows[:5]) / 5
    last = sum(r["reward_mean"] for r in rows[-5:]) / 5
    assert last > first + 0.2, (first, last)
    # per-function means: the weighted sum is match alone (length has weight 0)
    for r in rows:
        assert r["rewards/match/mean"] == pytest.approx(r["reward_mean"])
        assert 0.0 <= r["rewards/length/mean"] <= 4.0 and r["rewards/match/failed"] == 0
        assert "truncated_fraction" in r
    # eval_samples.jsonl: every held-out generation at steps 0, 10, 20, rewards recomputed from the
    # row's own target column
    samples = read_jsonl(run / "eval_samples.jsonl")
    assert sorted({s["step"] for s in samples}) == [0, 10, 20]
    held = get_task("dataset", {"path": str(data), "system_prompt": "x"}).eval_records(100, 0)
    assert len(samples) == 3 * len(held) == 24
    for s in samples:
        row = held[s["index"]]
        assert s["prompt"] == row["prompt"]
        assert s["rewards"]["match"] == s["completion"].count(row["target"]) / 4
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["phase"] == "eval"]
    assert "rewards/match/mean" in evals[-1]
    # the same per-function means in TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tb = {e.step: e.value for e in acc.Scalars("train/rewards/match/mean")}
    assert tb == pytest.approx({r["step"]: r["rewards/match/mean"] for r in rows})
    assert "eval/rewards/length/mean" in acc.Tags()["scalars"]
    # `progrl eval RUN` finds the data and the rewards again from the run directory alone
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["rewards/match/mean"] == pytest.approx(evals[-1]["rewards/match/mean"])


def test_progress_line_and_plot_show_each_reward_function(tmp_path, capsys):
    from progrl.config import TrainConfig
    from progrl.tracking import plot_run
    from progrl.trainer import progress_bar

    cfg = TrainConfig(steps=2)
    with progress_bar(cfg, 0) as bar:
        bar.advance({"reward_mean": 0.5, "rewards/match/mean": 0.25, "rewards/length/mean": 3.0,
                     "samples_per_s": 10.0})
    assert "reward 0.500 (match 0.250, length 3.000)" in capsys.readouterr().err
    rows = [{"step": s, "phase": "train", "reward_mean": 0.1 * s, "reward_std": 0.1, "rewards/match/mean": 0.1 * s,
             "rewards/length/mean": 1.0} for s in (1, 2)]
    rows.append({"step": 2, "phase": "eval", "mean_reward": 0.3, "rewards/match/mean": 0.3, "rewards/length/mean": 1.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **k):
        saved["titles"] = [ax.get_title() for ax in fig.axes]
        saved["labels"] = [line.get_label() for line in fig.axes[0].lines]
        return real_savefig(fig, *a, **k)

    plt.Figure.savefig = spy
    try:
        assert plot_run(tmp_path).exists()
    finally:
        plt.Figure.savefig = real_savefig
    assert "held-out length" in saved["titles"] and "held-out match" in saved["titles"]
    assert {"match", "length"} <= set(saved["labels"])


def test_in_memory_dataset_task(tmp_path):
    task = DatasetTask(rows=[{"prompt": "a", "x": 1}] * 3, eval_rows=[{"prompt": "b", "x": 2}])
    assert [r["x"] for r in task.train_records(2, 0, 1)] == [1, 1]
    assert task.eval_records(5, 0) == [{"x": 2, "prompt": "b"}]
