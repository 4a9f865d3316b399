"""A reward cannot reach into the trainer (issue 9, items 1, 2 and 4), on every backend.

1. Replies are data only: a reward writing crafted pickles (or malformed JSON) to every
   file descriptor of its worker never gets them deserialised by the trainer; the sample
   is a ``crash`` and the next batch scores normally.
2. Reward modules are imported in the workers, under ``load_timeout``: an import that
   raises, sleeps, calls ``os._exit(0)`` or segfaults is one RewardSpecError line (exit 2
   from ``progrl score`` and ``progrl train``), and the trainer never imports the module.
4. Results that cannot be classified the normal way (an exception whose ``__str__``
   raises, a ``numbers.Real`` whose ``__float__`` raises, ``os._exit`` on the inline
   backend, KeyboardInterrupt raised by a reward) are failures with a clear message.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reward_hostile
from progrl.rewards import RewardConfig, RewardEngine, RewardSpecError
from progrl.rewards.failures import MAX_MESSAGE, Outcome
from progrl.rewards.sandbox import sandbox_problem
from progrl.rewards.wire import (
    FunctionInfo,
    LineReader,
    ProtocolError,
    decode,
    encode_fatal,
    encode_ready,
    encode_reply,
    parse_reply,
    parse_start,
)
from test_rewards_faults import descendants, leftovers

HOSTILE = str(Path(__file__).with_name("reward_hostile.py"))
FAULTS = str(Path(__file__).with_name("reward_faults.py"))
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def engine(fn: str, backend: str = "process", **kw) -> RewardEngine:
    kw.setdefault("workers", 1)
    return RewardEngine(RewardConfig(functions=[f"{HOSTILE}:{fn}"], backend=backend, timeout=2, **kw))


# ----------------------------------------------------------------------------- 1. the wire format


def test_replies_round_trip_as_plain_data():
    outcomes = [Outcome(0.5), Outcome(None, "timeout", "slow"), Outcome(3.0), Outcome(None, "none", "returned None")]
    line = encode_reply(7, outcomes, False)
    assert line.endswith(b"\n") and line.isascii()
    assert parse_reply(decode(line[:-1]), 7, 4) == (outcomes, False)
    info = [FunctionInfo("f", True, None), FunctionInfo("g", False, frozenset({"prompt", "answer"}))]
    assert parse_start(decode(encode_ready(123, info)[:-1]), ["f", "g"]) == ("ready", info)
    assert parse_start(decode(encode_fatal("bad\nthing")[:-1]), ["f"]) == ("fatal", "bad thing")


@pytest.mark.parametrize("reply, why", [
    ([8, [1.0], False], "another job"),
    ([7, [1.0, 2.0], False], "2 outcomes for 1"),
    ([7, [["pwned", "x"]], False], "unknown failure kind"),
    ([7, [["error", "x" * (MAX_MESSAGE + 1)]], False], "too long"),
    ([7, [True], False], "number or [kind, message]"),
    ([7, ["1.0"], False], "number or [kind, message]"),
    ([7, [{"value": 1}], False], "number or [kind, message]"),
    ([7, [1e308 * 10], False], "non-finite"),
    ([7, [1.0], 0], "recycle"),
    ([7.0, [1.0], False], "another job"),
    ({"id": 7}, "must be"),
])
def test_malformed_replies_are_refused(reply, why):
    with pytest.raises(ProtocolError, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_reply(reply, 7, 1)


@pytest.mark.parametrize("data, why", [
    (reward_hostile.crafted_pickles("/nonexistent")[2], "must start with"),  # a bare pickle: refused at byte one
    (b"[1, [0.5], false]\x80\n", "non-printable"),
    (b'[1, ["error", "\xc3\xa9"], false]\n', "non-printable"),  # the sender must escape: ensure_ascii
    (b"[" + b"1," * 100 + b"\n", "too long"),
])
def test_line_reader_refuses_non_json_bytes_at_once(data, why):
    with pytest.raises(ProtocolError, match=why):
        LineReader(max_line=100).feed(data)


def test_decode_refuses_nan_and_deep_nesting():
    for line in (b"[1, [NaN], false]", b"[1, [Infinity], false]", b"[" * 100_000 + b"]" * 100_000, b"not json"):
        with pytest.raises(ProtocolError):
            decode(line)
    reader = LineReader(max_line=1000)
    assert reader.feed(b'[1,[0.5],fal') == [] and reader.pending()
    assert reader.feed(b'se]\n[2,') == [b'[1,[0.5],false]'] and reader.pending()


# ----------------------------------------------------------------------------- 1. hostile workers


@pytest.mark.parametrize("sandbox", [False, pytest.param(True, marks=pytest.mark.skipif(
    sandbox_problem() is not None, reason=str(sandbox_problem())))])
@pytest.mark.parametrize("fn", ["pickle_bomb", "bad_json_reply"])
def test_crafted_bytes_on_every_fd_never_reach_the_trainer(fn, sandbox, tmp_path):
    marker = tmp_path / "unpickled-in-the-trainer"
    before = set(descendants())
    with engine(fn, workers=2, sandbox=sandbox) as eng:
        res = eng.score(["p"] * 3, ["a", "bb", "ccc"], {"marker": [str(marker)] * 3})
        assert not marker.exists()  # nothing from the worker was unpickled here
        assert res.failures["crash"] == 3 and res.rewards == [0.01] * 3, res.errors
        assert "malformed" in res.errors[0]
    assert not marker.exists()
    assert leftovers(before) == []
    with RewardEngine(RewardConfig(functions=[f"{FAULTS}:good"], timeout=2, workers=1)) as eng:
        assert eng.score(["p"], ["abcd"]).rewards == [4.0]  # a fresh engine in the same process works


def test_score_survives_a_pickle_bomb(tmp_path):
    marker = tmp_path / "unpickled-in-score"
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": "abc", "marker": str(marker)}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "progrl", "score", "--reward", f"{HOSTILE}:pickle_bomb",
                           "--data", str(data), "--timeout", "5", "--json"],
                          capture_output=True, text=True, timeout=120, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert payload["rewards"] == [0.01] and payload["failures"]["crash"] == 1
    assert not marker.exists()


# ----------------------------------------------------------------------------- 2. loading in the workers


@pytest.fixture
def import_fault(tmp_path):
    def make(kind: str) -> str:
        path = tmp_path / f"import_{kind}.py"
        path.write_text(reward_hostile.import_fault_module(kind))
        return f"{path}:f"
    return make


IMPORT_MESSAGES = {
    "raise": "importing .* failed: ZeroDivisionError: boom at import",
    "sleep": "loading took longer than 1.5s",
    "exit0": "the reward worker exited with code 0 while loading it",
    "segfault": "the reward worker died from SIGSEGV while loading it",
}


@pytest.mark.parametrize("kind", list(IMPORT_MESSAGES))
def test_import_faults_are_one_spec_error_line(import_fault, kind):
    spec = import_fault(kind)
    before = set(descendants())
    t0 = time.monotonic()
    with pytest.raises(RewardSpecError, match=IMPORT_MESSAGES[kind]) as info:
        RewardEngine(RewardConfig(functions=[spec], timeout=1.5, workers=2))
    assert time.monotonic() - t0 < 10  # the 60 s sleep at import costs load_timeout, not 60 s
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"reward function {spec!r}")
    assert not [m for m in sys.modules if m.startswith(f"progrl_reward_import_{kind}")]  # never imported here
    assert leftovers(before) == []


def test_load_timeout_is_separate_from_the_call_timeout(import_fault, tmp_path):
    slow = tmp_path / "slow_import.py"
    slow.write_text("import time\ntime.sleep(1.0)\n\ndef f(prompt, completion):\n    return 2.0\n")
    with pytest.raises(RewardSpecError, match="load_timeout"):
        RewardEngine(RewardConfig(functions=[f"{slow}:f"], timeout=10, load_timeout=0.3, workers=1))
    with RewardEngine(RewardConfig(functions=[f"{slow}:f"], timeout=0.5, load_timeout=10, workers=1)) as eng:
        assert eng.score(["p"], ["c"]).rewards == [2.0]


def test_the_trainer_learns_the_signature_from_the_worker():
    cfg = RewardConfig(functions=[f"{FAULTS}:good_batched", f"{HOSTILE}:needs_solution"], workers=1)
    with RewardEngine(cfg) as eng:
        assert [f.batched for f in eng.functions] == [True, False]
        assert eng.functions[1].accepts == {"prompt", "completion", "solution"}
        assert eng.functions[0].accepts is None  # **columns
        res = eng.score(["p", "p"], ["a", "bb"], {"solution": ["a", "x"], "other": [1, 2]})
    assert res.per_function == {"good_batched": [1.0, 2.0], "needs_solution": [1.0, 0.0]}


def test_missing_attribute_is_reported_by_the_worker():
    with pytest.raises(RewardSpecError, match="has no attribute 'no_such_fn'"):
        RewardEngine(RewardConfig(functions=[f"{HOSTILE}:no_such_fn"], workers=1))


@pytest.mark.parametrize("kind", ["raise", "exit0", "sleep"])
def test_import_faults_exit_2_with_one_line_from_score(import_fault, tmp_path, kind):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n')
    proc = subprocess.run([sys.executable, "-m", "progrl", "score", "--reward", import_fault(kind), "--data", str(data),
                           "--timeout", "1.5"], capture_output=True, text=True, timeout=180, env=ENV, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1 and re.search(IMPORT_MESSAGES[kind], proc.stderr), proc.stderr
    assert proc.stdout == ""


def test_import_fault_exits_2_with_one_line_from_train(import_fault, tmp_path, capsys):
    """os._exit(0) at import used to end `progrl train` with exit code 0 and no output."""
    from progrl.cli import main

    spec = import_fault("exit0")
    code = main(["train", "arithmetic", "--steps", "1", "--out", str(tmp_path / "run"), "--set", "model.n_layer=1",
                 "--set", "model.n_embd=32", "--set", "model.n_head=2", "--set", "sft.examples=0",
                 "--set", f'reward.functions=["{spec}"]', "--set", 'reward.backend="process"',
                 "--set", "reward.timeout=1.5", "--set", "log.progress=false"])
    captured = capsys.readouterr()
    assert code == 2
    errors = [line for line in captured.err.splitlines() if "reward function" in line]
    assert errors == [f"reward function {spec!r}: the reward worker exited with code 0 while loading it"]
    assert "Traceback" not in captured.err and captured.out == ""


# ----------------------------------------------------------------------------- 4. hard-to-classify results


@pytest.mark.parametrize("backend", ["inline", "process"])
@pytest.mark.parametrize("fn, kind, fragment", [
    ("raise_unprintable", "error", "_Unprintable: <the exception's message could not be shown: its __str__ raised "
                                   "RuntimeError>"),
    ("return_broken_real", "type", "returned BrokenReal, which could not be converted to a float (ValueError: "
                                   "cannot convert me)"),
    ("return_broken_reals", "type", "returned BrokenReal, which could not be converted"),
])
def test_unclassifiable_results_are_clear_failures(backend, fn, kind, fragment):
    with engine(fn, backend) as eng:
        res = eng.score(["p", "p"], ["a", "b"])
        assert res.failures[kind] == 2 and res.n_failed == 2, res.errors
        assert fragment in res.errors[0] and "exited with code" not in res.errors[0]
        assert eng.policy[kind] == res.rewards[0]


def test_inline_os_exit_is_an_error_not_a_silent_exit():
    with engine("exit_zero", "inline") as eng:
        res = eng.score(["p"], ["a"])
    assert res.failures["error"] == 1 and "os._exit(0)" in res.errors[0] and "process" in res.errors[0]
    assert os._exit.__module__ == "posix"  # the guard is gone again


def test_inline_score_with_os_exit_reports_the_failure(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n')
    proc = subprocess.run([sys.executable, "-m", "progrl", "score", "--reward", f"{HOSTILE}:exit_zero",
                           "--data", str(data), "--backend", "inline"],
                          capture_output=True, text=True, timeout=60, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0 and "failures: error=1" in proc.stdout and "os._exit(0)" in proc.stdout


def test_inline_import_with_os_exit_is_a_spec_error(import_fault):
    with pytest.raises(RewardSpecError, match=r"RewardExit: the reward called os._exit\(0\)"):
        RewardEngine(RewardConfig(functions=[import_fault("exit0")], backend="inline"))


def test_keyboard_interrupt_raised_by_a_reward_in_a_worker_is_an_error():
    with engine("raise_keyboard_interrupt") as eng:
        res = eng.score(["p"], ["a"])
    assert res.failures["error"] == 1 and "KeyboardInterrupt" in res.errors[0]


def test_interrupted_score_gives_advice_for_score(tmp_path, capsys):
    from progrl.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n' * 3)
    code = main(["score", "--reward", f"{HOSTILE}:raise_keyboard_interrupt", "--data", str(data),
                 "--backend", "inline"])  # in-process, KeyboardInterrupt is Ctrl-C
    err = capsys.readouterr().err
    assert code == 130
    assert "progrl score: interrupted after 0 of 3 records" in err and "--resume" not in err


def test_failure_values_stay_finite_floats():
    with engine("return_broken_real", "inline") as eng:
        res = eng.score(["p"], ["a"])
    assert all(isinstance(r, float) and math.isfinite(r) for r in res.rewards)


def test_ctrl_c_in_score_with_workers_exits_130_and_leaves_no_process(tmp_path):
    import signal

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "completion": "c", "fault": "sleep"}\n' * 4)
    before = set(descendants())
    # started as a terminal starts it: with SIGINT's default action. Under a non-interactive shell's
    # background job (`cmd &`, e.g. a CI script run with nohup) SIGINT is inherited as ignored, and
    # Python then installs no KeyboardInterrupt handler at all, so nothing could interrupt it.
    proc = subprocess.Popen([sys.executable, "-m", "progrl", "score", "--reward", f"{FAULTS}:faulty", "--data",
                             str(data), "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while not [cmd for cmd in descendants().values() if "progrl.rewards.worker" in cmd]:
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.05)
    time.sleep(0.5)  # the workers are in the sleeping reward now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "progrl score: interrupted after 0 of 4 records" in err and "--resume" not in err
    assert "Traceback" not in err
    assert leftovers(before, timeout=5) == []
