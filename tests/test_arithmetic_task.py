"""The arithmetic task's training-only options: the length curriculum and the reward shaping."""

from progrl.tasks import get_task
from progrl.tasks.arithmetic import chars_at


def test_length_curriculum_rises_linearly_and_spares_held_out_prompts():
    task = get_task("arithmetic-chain", {"curriculum_start_chars": 5, "curriculum_steps": 100})
    assert [chars_at(task.options, s) for s in (1, 51, 101, 500)] == [5, 8, 10, 10]
    early = [r["prompt"] for r in task.train_records(64, 0, 1)]
    assert all(len(p.replace("<bos>", "").rstrip("=")) <= 5 for p in early)
    late = [r["prompt"] for r in task.train_records(64, 0, 200)]
    assert max(len(p.replace("<bos>", "").rstrip("=")) for p in late) > 5
    plain = get_task("arithmetic-chain")
    assert task.eval_records(32, 7) == plain.eval_records(32, 7)  # held-out prompts never shortened
    assert chars_at(plain.options, 1) == 10


def test_given_steps_show_right_first_steps_in_training_prompts_only():
    """`given_steps`: that share of training prompts shows the worked chain's first 1..n-1 steps
    (right ones: the rest of the chain scores 1.0 and the prompt's steps are verified); held-out
    prompts are always the bare expression."""
    from progrl.tasks import arithmetic_core as core
    from progrl.tasks.arithmetic import task_reward

    task = get_task("arithmetic-chain")
    task.options = task.Options(given_steps=0.5)
    records = task.train_records(400, seed=0, step=3)
    assert records == task.train_records(400, seed=0, step=3)  # a pure function of its arguments
    shown = [r["prompt"].count("=") - 1 for r in records]
    assert 0.4 < sum(k > 0 for k in shown) / len(shown) < 0.6
    assert {1, 2, 3} <= set(shown)
    for r in records:
        expr = r["prompt"].replace(core.BOS, "").split("=")[0]
        chain = core.worked_chain(expr)
        given = r["prompt"].replace(core.BOS, "").split("=")[:-1]
        assert given == chain[:len(given)] and len(given) < len(chain)  # right steps, at least one left
        rest = "=".join(chain[len(given):])
        assert task_reward([r["prompt"]], [rest], [10.0])[0] == 1.0
        assert core.verified_chain_prefix(r["prompt"], rest) == rest
    assert all(r["prompt"].count("=") == 1 for r in task.eval_records(200, seed=0))
    task.options = task.Options()
    assert all(r["prompt"].count("=") == 1 for r in task.train_records(200, seed=0, step=3))
