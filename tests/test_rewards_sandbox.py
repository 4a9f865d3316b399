"""The bubblewrap sandbox of the process backend, and what can be done without it (issue 9, item 3).

Skipped only where bwrap cannot create a sandbox (it is installed here and in CI by .ci/run).
With the sandbox: SIGSTOP of the parent is harmless, a daemon in its own session dies with
the worker, the host's network (a TCP server on the host's 127.0.0.1) is unreachable unless
``sandbox_network``, writes outside the scratch directory fail, and timeouts, memory caps,
crash classification and good values work as without it. Without it: the daemon is still
killed (the worker is its subreaper), and the SIGSTOP does freeze the caller (documented:
only the sandbox prevents it).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from progrl.rewards import RewardConfig, RewardEngine
from progrl.rewards.sandbox import sandbox_problem
from test_rewards_faults import EXPECTED, check_fault, descendants, leftovers

HOSTILE = str(Path(__file__).with_name("reward_hostile.py"))
FAULTS = str(Path(__file__).with_name("reward_faults.py"))
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

needs_bwrap = pytest.mark.skipif(sandbox_problem() is not None, reason=str(sandbox_problem()))


def engine(fn: str, sandbox: bool = True, **kw) -> RewardEngine:
    kw.setdefault("workers", 1)
    kw.setdefault("timeout", 1.5)
    return RewardEngine(RewardConfig(functions=[f"{HOSTILE}:{fn}"], sandbox=sandbox, **kw))


def wait_gone(token: str, what: str) -> None:
    deadline = time.monotonic() + 5
    while processes_with(token):
        assert time.monotonic() < deadline, f"{what}: {processes_with(token)}"
        time.sleep(0.05)


def processes_with(token: str) -> list[int]:
    """Live processes whose command line contains ``token``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if token.encode() in cmd and state != b"Z":
            out.append(int(entry))
    return out


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


@pytest.fixture
def tcp_server():
    """A listening socket on the host's loopback (a new network namespace has a loopback of its own)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv.getsockname()[1]
    srv.close()


# ----------------------------------------------------------------------------- signals and processes


def _score_stop_parent(tmp_path: Path, sandbox: bool) -> subprocess.Popen:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "completion": "abc"}\n')
    argv = [sys.executable, "-m", "progrl", "score", "--reward", f"{HOSTILE}:stop_parent", "--data", str(data),
            "--workers", "1", "--json"] + (["--sandbox"] if sandbox else [])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)


@needs_bwrap
def test_sigstop_of_the_parent_is_harmless_in_the_sandbox(tmp_path):
    proc = _score_stop_parent(tmp_path, sandbox=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["rewards"] == [3.0]  # the reward ran and answered


def test_sigstop_of_the_parent_freezes_it_without_the_sandbox(tmp_path):
    """The control: the same reward without the sandbox does stop its caller (docs/rewards.md says so)."""
    proc = _score_stop_parent(tmp_path, sandbox=False)
    try:
        deadline = time.monotonic() + 30
        while state_of(proc.pid) != "T":
            assert proc.poll() is None and time.monotonic() < deadline, "the caller was never stopped"
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL works on a stopped process; its workers die with it
        proc.communicate()


@pytest.mark.parametrize("sandbox", [pytest.param(True, marks=needs_bwrap), False])
def test_a_daemon_in_its_own_session_dies_with_the_worker(sandbox):
    token = f"progrl-test-daemon-{uuid.uuid4().hex}"
    before = set(descendants())
    with engine("setsid_daemon_then_hang", sandbox) as eng:
        res = eng.score(["p"], ["a"], {"token": [token]})
        assert res.failures["timeout"] == 1, res.errors
        wait_gone(token, "the reward's daemon survived the timeout")
    assert leftovers(before) == []


@pytest.mark.parametrize("sandbox", [pytest.param(True, marks=needs_bwrap), False])
def test_closing_the_engine_kills_daemons_left_by_rewards(sandbox):
    token = f"progrl-test-daemon-{uuid.uuid4().hex}"
    with engine("setsid_daemon", sandbox) as eng:
        assert eng.score(["p"], ["a"], {"token": [token]}).rewards == [1.0]
        assert processes_with(token)  # it runs while the worker lives
    wait_gone(token, "the reward's daemon outlived the engine")


# ----------------------------------------------------------------------------- network and files


@needs_bwrap
def test_no_network_in_the_sandbox(tcp_server):
    with engine("connect_tcp") as eng:
        assert eng.score(["p"], ["a"], {"port": [tcp_server]}).rewards == [0.0]
    with engine("connect_tcp", sandbox_network=True) as eng:
        assert eng.score(["p"], ["a"], {"port": [tcp_server]}).rewards == [1.0]
    with engine("connect_tcp", sandbox=False) as eng:  # the control: the server is reachable from outside
        assert eng.score(["p"], ["a"], {"port": [tcp_server]}).rewards == [1.0]


@needs_bwrap
def test_writes_outside_the_scratch_directory_fail(tmp_path):
    targets = [tmp_path / "written", Path.cwd() / f"written-{uuid.uuid4().hex}", Path("/tmp") / uuid.uuid4().hex]
    with engine("write_file") as eng:
        res = eng.score(["p"] * 3, ["a"] * 3, {"path": [str(t) for t in targets]})
        assert res.rewards == [0.0, 0.0, 0.0]
        assert not any(t.exists() for t in targets)
    with engine("write_scratch") as eng:  # the scratch directory (TMPDIR) is writable
        assert eng.score(["p"], ["abcde"]).rewards == [5.0]
    with engine("write_file", sandbox=False) as eng:  # the control
        assert eng.score(["p"], ["a"], {"path": [str(targets[0])]}).rewards == [1.0] and targets[0].exists()


@needs_bwrap
def test_scratch_directories_are_removed():
    import tempfile

    def scratch_dirs():
        return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("progrl-reward-")}

    before = scratch_dirs()
    with engine("write_scratch", workers=2) as eng:
        eng.score(["p"] * 4, ["a"] * 4)
        assert len(scratch_dirs() - before) == 2
    assert scratch_dirs() - before == set()


# ----------------------------------------------------------------------------- the fault suite inside


@pytest.fixture(scope="module")
def sandbox_engine():
    if sandbox_problem() is not None:
        pytest.skip(str(sandbox_problem()))
    cfg = RewardConfig(backend="process", timeout=1.0, workers=2, memory_mb=1024, sandbox=True)
    with RewardEngine(cfg, [f"{FAULTS}:faulty"]) as eng:
        yield eng


@pytest.mark.parametrize("fault", list(EXPECTED))
def test_sandbox_fault(sandbox_engine, fault):
    check_fault(sandbox_engine, fault, batched=False)


def test_sandbox_needs_the_process_backend_and_bwrap(monkeypatch):
    from progrl.rewards import RewardSpecError
    from progrl.rewards import sandbox

    with pytest.raises(ValueError, match='sandbox = true needs backend = "process"'):
        RewardConfig(sandbox=True, backend="inline")
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    sandbox.sandbox_problem.cache_clear()
    try:
        with pytest.raises(RewardSpecError, match="bwrap not found.*apt-get install bubblewrap"):
            engine("write_scratch")
    finally:
        sandbox.sandbox_problem.cache_clear()
