"""TRL's own reward functions (``trl.rewards``), called unchanged, on conversational data:
through ``progrl score`` and through a short training run, equal to calling them directly.

What it must show #3. TRL is in the dev extra (its wheel is ~1 MB and needs nothing the
project does not already install); ``accuracy_reward`` also needs math-verify (dev extra too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from progrl.cli import main
from progrl.rewards.spec import detect_batched
from progrl.tracking import read_jsonl

trl_rewards = pytest.importorskip("trl.rewards")
pytest.importorskip("math_verify")

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import make_model_dir, make_tokenizer  # noqa: E402

FACTORIES = '''
from trl.rewards import get_repetition_penalty_reward, get_soft_overlong_punishment

overlong = get_soft_overlong_punishment(max_completion_len=6, soft_punish_cache=4)
repetition = get_repetition_penalty_reward(ngram_size=2, max_penalty=-1.0)
'''

RECORDS = [
    {"prompt": [{"role": "user", "content": "What is 1/3 as a fraction?"}],
     "completion": [{"role": "assistant", "content": "<think>\nOne third.\n</think>\nThe answer is $\\boxed{\\frac{1}{3}}$"}],
     "solution": "\\frac{1}{3}", "completion_ids": [5, 6, 7, 8, 9, 10, 11, 12]},
    {"prompt": [{"role": "system", "content": "Think first."}, {"role": "user", "content": "And 1/2?"}],
     "completion": "<think>no closing tag. The answer is $\\boxed{\\frac{1}{3}}$",  # a string: wrapped as TRL does
     "solution": "\\frac{1}{2}", "completion_ids": [5, 5, 5, 5]},
    {"prompt": [{"role": "user", "content": "2+2?"}],
     "completion": [{"role": "assistant", "content": "<think>2+2</think>$\\boxed{4}$"}],
     "solution": "$4$", "completion_ids": [1, 2]},
]


def as_messages(c):
    return c if isinstance(c, list) else [{"role": "assistant", "content": c}]


def direct(fns):
    """Each function called directly, as TRL's GRPOTrainer calls it."""
    kwargs = {"prompts": [r["prompt"] for r in RECORDS], "completions": [as_messages(r["completion"]) for r in RECORDS],
              "completion_ids": [r["completion_ids"] for r in RECORDS], "solution": [r["solution"] for r in RECORDS]}
    return {name: fn(**kwargs) for name, fn in fns.items()}


def score_json(capsys, data, *rewards, backend="inline"):
    args = ["score", "--data", str(data), "--json", "--backend", backend]
    for r in rewards:
        args += ["--reward", r]
    capsys.readouterr()
    assert main(args) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rewards"]


def test_token_id_rewards_are_detected_as_batched():
    assert detect_batched(trl_rewards.get_soft_overlong_punishment(10, 2))
    assert detect_batched(trl_rewards.get_repetition_penalty_reward())
    assert detect_batched(trl_rewards.think_format_reward) and detect_batched(trl_rewards.accuracy_reward)


def test_progrl_score_on_conversational_records_equals_direct_calls(tmp_path, capsys):
    (tmp_path / "factories.py").write_text(FACTORIES)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    sys.path.insert(0, str(tmp_path))
    try:
        import factories
    finally:
        sys.path.remove(str(tmp_path))
    expected = direct({"think": trl_rewards.think_format_reward, "accuracy": trl_rewards.accuracy_reward,
                       "overlong": factories.overlong, "repetition": factories.repetition})
    assert expected["think"] == [1.0, 0.0, 1.0] and expected["accuracy"] == [1.0, 0.0, 1.0]
    assert expected["overlong"] == [-1.0, -0.5, 0.0] and expected["repetition"] == pytest.approx([0.0, -2 / 3, 0.0])
    specs = {"think": "trl.rewards:think_format_reward", "accuracy": "trl.rewards:accuracy_reward",
             "overlong": f"{tmp_path}/factories.py:overlong", "repetition": f"{tmp_path}/factories.py:repetition"}
    for name, spec in specs.items():  # each alone, in the trainer's process
        assert score_json(capsys, data, spec) == pytest.approx(expected[name]), name
    # all four together in worker processes: the weighted sum (weights 1)
    together = score_json(capsys, data, *specs.values(), backend="process")
    assert together == pytest.approx([sum(v[i] for v in expected.values()) for i in range(len(RECORDS))])


def test_training_on_a_conversational_dataset_gives_trl_rewards_their_shapes(tmp_path):
    (tmp_path / "factories.py").write_text(FACTORIES)
    rows = [{"prompt": [{"role": "user", "content": f"say {c}"}], "solution": "$4$"} for c in "abcdefgh"]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = make_model_dir(tmp_path / "model")
    run = tmp_path / "run"
    functions = ('["trl.rewards:think_format_reward", "trl.rewards:accuracy_reward", '
                 f'"{tmp_path}/factories.py:overlong", "{tmp_path}/factories.py:repetition"]')
    assert main(["train", "dataset", "--model", str(model), "--out", str(run), "--steps", "2",
                 "--set", f"task_options.path={data}", "--set", "task_options.eval_fraction=0.5",
                 "--set", f"reward.functions={functions}", "--set", "reward.backend=inline", "--set", "rollout.batch_size=4",
                 "--set", "rollout.max_new_tokens=8", "--set", "log.progress=false", "--set", "log.report_to=[]",
                 "--set", "log.plot=false", "--set", "log.checkpoint_every=0", "--set", "threads=1"]) == 0
    train = [r for r in read_jsonl(run / "metrics.jsonl") if r["phase"] == "train"]
    for name in ("think_format_reward", "accuracy_reward", "overlong", "repetition"):
        assert f"rewards/{name}/mean" in train[-1] and train[-1][f"rewards/{name}/failed"] == 0, name

    # the held-out generations' per-function rewards equal the functions called directly on them
    sys.path.insert(0, str(tmp_path))
    try:
        import factories
    finally:
        sys.path.remove(str(tmp_path))
    tok = make_tokenizer()
    samples = read_jsonl(run / "eval_samples.jsonl")
    assert samples and all(isinstance(s["prompt"], list) for s in samples)
    completions = [[{"role": "assistant", "content": s["completion"]}] for s in samples]
    ids = [tok(s["completion"], add_special_tokens=False)["input_ids"] + ([] if s["truncated"] else [tok.eos_token_id])
           for s in samples]
    assert any(len(i) > 2 for i in ids)  # the overlong and repetition rewards see real lengths
    expected = {
        "think_format_reward": trl_rewards.think_format_reward(completions),
        "accuracy_reward": trl_rewards.accuracy_reward(completions, solution=["$4$"] * len(samples)),
        "overlong": factories.overlong(completion_ids=ids),
        "repetition": factories.repetition(completion_ids=ids),
    }
    for name, values in expected.items():
        assert [s["rewards"][name] for s in samples] == pytest.approx(values), name
