"""Checkpoints survive a kill at any point of a save, a full disk, and damaged files (issue 9, items 5, 7, 9).

A kill is simulated by raising ``Killed`` (a BaseException nothing in progrl catches, so no
cleanup runs, as with kill -9) at the n-th call of one of the file operations a save makes:
``os.replace``, ``shutil.rmtree`` (after deleting one file: a half-done deletion),
``torch.save`` (after writing half of the bytes: a truncated file) and file opens, for every n
until the save completes.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import subprocess

import pytest
import torch

from progrl import checkpoint as ckpt
from progrl.kl import AdaptiveKLController
from progrl.storage import StorageError


class Killed(BaseException):
    pass


def make_state(seed: int):
    torch.manual_seed(seed)
    policy = torch.nn.Linear(8, 4)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    policy(torch.randn(3, 8)).sum().backward()
    opt.step()
    sched.step()
    kl = AdaptiveKLController(0.2, 6.0, 10000.0)
    kl.update(float(seed), 16)
    return policy, opt, sched, kl


def save(run, step, seed, keep=1):
    policy, opt, sched, kl = make_state(seed)
    return ckpt.save_checkpoint(run, step, policy=policy, optimizer=opt, scheduler=sched, kl_controller=kl,
                                state={"eval_before": {"accuracy": 0.5}, "seed": seed}, keep=keep)


def load(path):
    policy, opt, sched, kl = make_state(99)
    state = ckpt.load_checkpoint(path, policy=policy, optimizer=opt, scheduler=sched, kl_controller=kl)
    return state, policy.weight.detach().clone()


def weight_of(seed):
    return make_state(seed)[0].weight.detach().clone()


class Injector:
    """Raise Killed at the n-th call (0-based) of any patched file operation."""

    def __init__(self, monkeypatch, n):
        self.n, self.calls = n, 0
        real_replace, real_rmtree, real_save, real_open = os.replace, shutil.rmtree, torch.save, builtins.open

        def tick():
            hit = self.calls == self.n
            self.calls += 1
            return hit

        def replace(src, dst, **kw):
            if tick():
                raise Killed
            return real_replace(src, dst, **kw)

        def rmtree(path, *a, **kw):
            if tick():
                files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
                if files:
                    os.unlink(sorted(files)[0])  # deleted one file, then the kill
                raise Killed
            return real_rmtree(path, *a, **kw)

        def save_(obj, f, *a, **kw):
            if tick():
                buf = io.BytesIO()
                real_save(obj, buf, *a, **kw)
                data = buf.getvalue()
                f.write(data[:len(data) // 2])  # half written, then the kill
                f.flush()
                raise Killed
            return real_save(obj, f, *a, **kw)

        def open_(file, mode="r", *a, **kw):
            if ("w" in mode or "a" in mode) and "checkpoints" in str(file) and tick():
                raise Killed
            return real_open(file, mode, *a, **kw)

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(shutil, "rmtree", rmtree)
        monkeypatch.setattr(torch, "save", save_)
        monkeypatch.setattr(builtins, "open", open_)


@pytest.mark.parametrize("scenario", ["next step", "same step again", "keep 2"])
def test_a_kill_at_any_point_of_a_save_leaves_a_loadable_checkpoint(tmp_path, monkeypatch, scenario):
    """Item 5: e.g. the end-of-run re-save of the step just checkpointed (same step again)."""
    new_step = 2 if scenario == "same step again" else 4
    keep = 2 if scenario == "keep 2" else 1
    n, completed = 0, False
    while not completed:
        run = tmp_path / f"run{n}"
        save(run, 2, seed=1, keep=keep)
        with monkeypatch.context() as m:
            Injector(m, n)
            try:
                save(run, new_step, seed=2, keep=keep)
                completed = True
            except Killed:
                pass
        found = ckpt.latest_checkpoint(run)
        assert found is not None, (scenario, n, sorted(p.name for p in (run / "checkpoints").iterdir()))
        state, w = load(found)
        # either the old checkpoint or the complete new one, never a mixture
        assert (state["step"], state["seed"]) in {(2, 1), (new_step, 2)}, (n, found)
        assert torch.equal(w, weight_of(state["seed"]))
        if completed:
            assert (state["step"], state["seed"]) == (new_step, 2)
        # the next save tidies up whatever the kill left behind
        save(run, 6, seed=3, keep=keep)
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        expected_kept = ["latest", "step-000006"] if keep == 1 else ["latest", f"step-{new_step if completed else 2:06d}", "step-000006"]
        if keep == 2 and not completed:
            # the killed save may have completed its rename before dying: then step-4 is the older one kept
            assert names[-1] == "step-000006" and len(names) == 3, names
        else:
            assert names == sorted(set(expected_kept)), (n, names)
        assert load(ckpt.latest_checkpoint(run))[0]["step"] == 6
        n += 1
    assert n > 8  # every write, rename and delete of a save was a kill point


def test_latest_checkpoint_prefers_the_highest_complete_step_and_recovers_leftovers(tmp_path):
    run = tmp_path / "run"
    save(run, 2, seed=1)
    root = run / "checkpoints"
    # a kill between "rename the old copy aside" and "rename the new one into place"
    shutil.copytree(root / "step-000002", root / ".tmp-step-000002")
    os.replace(root / "step-000002", root / ".old-step-000002")
    assert ckpt.latest_checkpoint(run).name == ".tmp-step-000002"
    shutil.rmtree(root / ".tmp-step-000002")
    assert ckpt.latest_checkpoint(run).name == ".old-step-000002"
    # an incomplete newer folder (no state.json yet) is never chosen
    (root / ".tmp-step-000004").mkdir()
    torch.save({}, root / ".tmp-step-000004" / "policy.pt")
    assert ckpt.latest_checkpoint(run).name == ".old-step-000002"
    # a half-deleted folder is named .del-* and ignored
    (root / ".del-step-000008").mkdir()
    (root / ".del-step-000008" / "state.json").write_text("{}")
    assert ckpt.latest_checkpoint(run).name == ".old-step-000002"
    ckpt.tidy(root)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000002"]
    assert load(ckpt.latest_checkpoint(run))[0]["step"] == 2


def enospc_after(monkeypatch, n_ok):
    real = torch.save
    calls = []

    def full(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) > n_ok:
            f.write(b"x" * 100)  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full)


@pytest.mark.parametrize("n_ok", [0, 1, 2])
def test_disk_full_during_a_save_says_so_removes_the_partial_write_and_keeps_the_previous(tmp_path, monkeypatch,
                                                                                            n_ok):
    """Item 7 (monkeypatched ENOSPC)."""
    run = tmp_path / "run"
    save(run, 2, seed=1)
    with monkeypatch.context() as m:
        enospc_after(m, n_ok)
        with pytest.raises(StorageError) as info:
            save(run, 4, seed=2)
    msg = str(info.value)
    assert "no space left on device" in msg and "step-000004" in msg and "step-000002" in msg
    assert "\n" not in msg
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000002"]
    assert load(ckpt.latest_checkpoint(run))[0]["step"] == 2


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB file system (needs root and mount permission; skipped otherwise)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                           timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("mount is not available")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()[:80]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20)


def test_disk_full_on_a_real_small_file_system(small_tmpfs):
    """Item 7 with a real ENOSPC: a checkpoint of ~0.75 MiB fits once, not twice."""
    run = small_tmpfs / "run"

    def big(seed):
        torch.manual_seed(seed)
        policy = torch.nn.Linear(384, 512)  # ~0.75 MiB of float32 weights
        opt = torch.optim.SGD(policy.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
        return policy, opt, sched, AdaptiveKLController(0.2, 6.0, 10000.0)

    p, o, s, k = big(1)
    ckpt.save_checkpoint(run, 2, policy=p, optimizer=o, scheduler=s, kl_controller=k, state={})
    p, o, s, k = big(2)
    with pytest.raises(StorageError, match="no space left on device") as info:
        ckpt.save_checkpoint(run, 4, policy=p, optimizer=o, scheduler=s, kl_controller=k, state={})
    assert "step-000004" in str(info.value)
    assert sorted(x.name for x in (run / "checkpoints").iterdir()) == ["latest", "step-000002"]
    p2, o2, s2, k2 = big(3)
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run), policy=p2)["step"] == 2
    assert torch.equal(p2.weight, big(1)[0].weight)
    # the partial write was removed: the space is free again
    assert shutil.disk_usage(small_tmpfs).free > 0.2 * 2**20


def test_damaged_checkpoint_files_are_one_line_errors_naming_the_file(tmp_path):
    """Item 9 (library level; the CLI side is in tests/test_cli_errors.py)."""
    run = tmp_path / "run"
    path = save(run, 2, seed=1)
    data = (path / "policy.pt").read_bytes()
    (path / "policy.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match=r"policy\.pt is damaged or truncated") as info:
        load(path)
    assert "\n" not in str(info.value)
    (path / "policy.pt").write_bytes(data)
    (path / "state.json").write_text('{"step": 2, "kl": {')
    with pytest.raises(ckpt.CheckpointError, match=r"state\.json is not valid JSON"):
        load(path)
    (path / "state.json").write_text('{"kl": {}}')
    with pytest.raises(ckpt.CheckpointError, match=r"state\.json is not a progrl checkpoint state"):
        load(path)
    (path / "state.json").write_text('{"step": 2, "kl": {"value": 0.2}}')
    other = torch.nn.Linear(3, 3)
    with pytest.raises(ckpt.CheckpointError, match=r"does not fit this run's model"):
        ckpt.load_checkpoint(path, policy=other)
