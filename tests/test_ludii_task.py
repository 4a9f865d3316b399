"""The ludii task without Java: data from a folder of our own games, the validator evaluator, a tiny
`progrl train ludii` run, and the one-line errors (exit code 2) for bad setups."""

import zipfile

import pytest

from ludii_games import LINE_FOUR, WITH_DEFINE, WITH_OPTION
from progrl.cli import main
from progrl.ludii import fim
from progrl.tasks import get_task

TINY = ["--set", "task_options.evaluator=validator", "--set", "task_options.ludemes=none",
        "--set", "task_options.context_chars=60", "--set", "task_options.vocab_size=300",
        "--set", "task_options.min_middle_chars=5", "--set", "task_options.held_out_fraction=0.3",
        "--set", "model.n_layer=1", "--set", "model.n_embd=32", "--set", "model.n_head=2", "--set", "model.n_positions=128",
        "--set", "sft.examples=32", "--set", "sft.epochs=1", "--set", "eval.n_prompts=8",
        "--set", "rollout.batch_size=4", "--set", "rollout.max_new_tokens=16", "--set", "task_options.max_middle_tokens=16",
        "--set", "task_options.max_prompt_tokens=100",
        "--set", "log.tensorboard=false", "--set", "log.plot=false", "--set", "log.progress=false"]


def own_games(folder, n=12):
    """Our own variants: board sizes and line lengths (distinct games for the split)."""
    folder.mkdir(parents=True, exist_ok=True)
    k = 0
    for size in (4, 5, 6, 7):
        for line in (3, 4, 5):
            if k >= n:
                break
            text = LINE_FOUR.replace("(square 5)", f"(square {size})").replace("(is Line 4)", f"(is Line {line})")
            text = text.replace('"Line Four"', f'"Line {line} on {size}"')
            (folder / f"line-{size}-{line}.lud").write_text(text)
            k += 1
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "long-line.lud").write_text(WITH_DEFINE)
    (folder / "sub" / "sized.lud").write_text(WITH_OPTION)  # options: skipped without the engine
    return folder


def test_task_from_a_folder_with_the_validator(tmp_path, monkeypatch):
    monkeypatch.setenv("PROGRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LUDII_JAR", raising=False)
    data = own_games(tmp_path / "games")
    task = get_task("ludii", {"data": str(data), "evaluator": "validator", "ludemes": "none", "vocab_size": 300,
                              "min_middle_chars": 5, "held_out_fraction": 0.3})
    tok = task.build_tokenizer()
    task.bind_tokenizer(tok)
    assert task.report["games"] == 13 and task.report["left_out"] == {"uses options": 1}
    assert task.report["expanded_by_engine"] is False
    train_games = {ex.game for ex in task.train_examples}
    held_games = {ex.game for ex in task.held_out_examples}
    assert train_games and held_games and train_games.isdisjoint(held_games)
    records = task.eval_records(6, seed=1)
    assert all(r["game"] in held_games for r in records)
    assert all(r["game"] in train_games for r in task.train_records(8, seed=0, step=3))
    assert task.train_records(8, 0, 3) == task.train_records(8, 0, 3)  # a pure function of the step
    # the reward of the original middle is full marks; a broken middle less; a malformed one 0
    [(fn, _w)] = task.reward_functions()
    rec = records[0]
    scores = fn([rec["prompt"]] * 3, [" " + rec["middle"], " (sqare)", " (unclosed"],
                prefix=[rec["prefix"]] * 3, suffix=[rec["suffix"]] * 3)
    assert scores[0] == 1.0 and scores[2] == 0.0
    # deleting the masked ludeme leaves a game the validator likes, but an empty middle is malformed
    from progrl.ludii.evaluators import EvaluatorSpec
    from progrl.ludii.reward import LudiiReward

    empty = [rec["prompt"]], [" "], [rec["prefix"]], [rec["suffix"]]
    assert fn(*empty) == [0.0]
    assert LudiiReward(EvaluatorSpec(kind="validator"), require_ludeme=False)(*empty)[0] > 0.5  # the paper's rule
    texts = task.sft_texts(4, seed=0)
    assert all(t.endswith("<|endoftext|>") and "### MID: " in t for t in texts)
    m = task.metrics([rec, rec], [" " + rec["middle"] + ") junk", " (unclosed"], [1.0, 0.0])
    assert m["exact_middle_rate"] == 0.5 and m["malformed_rate"] == 0.5 and m["proxy_valid_rate"] == 0.5
    assert tok.decode(tok(fim.PRE)["input_ids"]) == fim.PRE


def test_train_ludii_with_the_validator_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROGRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LUDII_JAR", raising=False)
    data = own_games(tmp_path / "games")
    rc = main(["train", "ludii", "--steps", "2", "--out", str(tmp_path / "run"),
               "--set", f"task_options.data={data}", *TINY])
    assert rc == 0
    out = capsys.readouterr().out
    assert "held-out mean_reward: before RL" in out and "held-out proxy_valid_rate" in out
    assert (tmp_path / "run" / "final" / "tokenizer.json").exists()


def _fails(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]  # (after the "run directory" line, when the run got that far)


def test_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROGRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LUDII_JAR", raising=False)
    run = ["train", "ludii", "--steps", "1", "--out", str(tmp_path / "run")]
    # the engine needs java: none on PATH
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    with monkeypatch.context() as m:
        m.setenv("PATH", str(empty))
        m.delenv("JAVA_HOME", raising=False)
        assert "java not found" in _fails(run, capsys)
    # no jar
    if _has_java():
        assert "no Ludii jar" in _fails(run, capsys)
        not_a_zip = tmp_path / "a.jar"
        not_a_zip.write_text("hello")
        assert "is not a jar file" in _fails(run + ["--set", f"task_options.jar={not_a_zip}"], capsys)
        other = tmp_path / "other.jar"
        with zipfile.ZipFile(other, "w") as z:
            z.writestr("org/example/Main.class", b"\xca\xfe")
        assert "is not a Ludii jar" in _fails(run + ["--set", f"task_options.jar={other}"], capsys)
        assert "jar not found" in _fails(run + ["--set", f"task_options.jar={tmp_path / 'nope.jar'}"], capsys)
    # data folders, with the validator (no Java needed)
    v = run + ["--set", "task_options.evaluator=validator"]
    assert "data folder not found" in _fails(v + ["--set", f"task_options.data={tmp_path / 'missing'}"], capsys)
    (tmp_path / "empty").mkdir()
    assert "no .lud files in" in _fails(v + ["--set", f"task_options.data={tmp_path / 'empty'}"], capsys)
    bad = own_games(tmp_path / "bad")
    (bad / "latin1.lud").write_bytes('(game "Caf\xe9" (players 2))'.encode("latin-1"))
    err = _fails(v + ["--set", f"task_options.data={bad}"], capsys)
    assert "latin1.lud is not UTF-8 text" in err
    # a FIM file with a record that is not in the paper's form
    jsonl = tmp_path / "fim.jsonl"
    jsonl.write_text('{"text": "### PRE: a ### SUF: b ### MID: c"}\n{"text": "no markers"}\n')
    assert "record 2 is not in the ### PRE:" in _fails(v + ["--set", f"task_options.data={jsonl}"], capsys)
    # an unknown option
    assert "task_options.evaluatr: unknown field" in _fails(run + ["--set", "task_options.evaluatr=x"], capsys)


def _has_java() -> bool:
    import shutil

    return shutil.which("java") is not None and shutil.which("javac") is not None


def test_fim_file_in_the_papers_form(tmp_path, monkeypatch):
    monkeypatch.setenv("PROGRL_CACHE", str(tmp_path / "cache"))
    rows = []
    for size in range(3, 13):
        game = LINE_FOUR.replace("(square 5)", f"(square {size})")
        for ex in fim.make_examples(f"g{size}", game, per_game=3, min_chars=5, max_chars=60):
            rows.append('{"text": %s}' % __import__("json").dumps(ex.text))
    path = tmp_path / "fim.jsonl"
    path.write_text("\n".join(rows) + "\n")
    task = get_task("ludii", {"data": str(path), "evaluator": "validator", "ludemes": "none", "vocab_size": 300,
                              "held_out_fraction": 0.3})
    task.bind_tokenizer(task.build_tokenizer())
    train = {ex.game for ex in task.train_examples}
    held = {ex.game for ex in task.held_out_examples}
    assert train and held and train.isdisjoint(held)  # grouped by recomposed game: never on both sides
    assert all(ex.full_game.startswith('(game "Line Four"') for ex in task.train_examples)


def test_paper_config_and_task_listing(capsys):
    import argparse

    from progrl.cli import load_run_config

    args = argparse.Namespace(task="ludii", config="configs/ludii-paper.toml", overrides=[], steps=None, seed=None,
                              model=None, out=None)
    cfg = load_run_config(args)
    assert cfg.model.name == "EleutherAI/pythia-410m" and cfg.rollout.batch_size == 12
    assert cfg.algo.minibatch_size == 6 and cfg.algo.lr == 1.41e-5 and cfg.algo.estimator == "gae"
    opts = get_task("ludii", cfg.task_options).options
    assert (opts.playouts, opts.max_turns, opts.budget_s) == (100, 500, 5.0) and opts.context_chars == 0
    assert main(["tasks"]) == 0
    assert "ludii" in capsys.readouterr().out
