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
