"""The optional sandbox of the process backend (``reward.sandbox = true``), built on bubblewrap.

Each reward worker runs inside its own ``bwrap`` (Debian/Ubuntu package ``bubblewrap``):

- its own PID namespace (``--unshare-pid``): the trainer's processes are not visible, so
  the reward cannot signal, stop or trace them; the sandbox's init is bwrap, and when it
  dies the kernel kills every process left in the namespace, so no descendant outlives
  the worker (``--die-with-parent`` ties the sandbox to the trainer, and the supervisor
  kills the outer bwrap on timeout);
- no network (``--unshare-net``: a private loopback only) unless ``reward.sandbox_network``;
- the whole file system read-only (``--ro-bind / /``; nothing is hidden, only writes are
  refused), a private ``/dev`` and ``/proc``, and one writable scratch directory per worker
  (``TMPDIR``), created by the supervisor and removed with the worker;
- a new session (``--new-session``: no terminal to inject keystrokes into), its own IPC
  and host name namespaces, and, when the trainer runs as root, no capabilities
  (``--cap-drop ALL``; bwrap also sets ``no_new_privs``).

The time limit (the supervisor's clock), the memory cap (RLIMIT_AS set by the worker) and
the data-only protocol work exactly as without the sandbox.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) or set reward.sandbox = false"


def bwrap_path() -> str | None:
    """The ``bwrap`` executable, or None when it is not installed."""
    return shutil.which("bwrap")


def bwrap_command(scratch: str, network: bool, cwd: str) -> list[str]:
    """The bwrap prefix of a sandboxed worker's command line (the worker's own argv follows)."""
    bwrap = bwrap_path() or "bwrap"
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--bind", scratch, scratch,
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session",
            "--setenv", "TMPDIR", scratch, "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]
    if not network:
        argv.append("--unshare-net")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv += ["--cap-drop", "ALL"]
    if os.path.isdir(cwd):
        argv += ["--chdir", cwd]
    return argv + ["--"]


@functools.lru_cache(maxsize=4)
def sandbox_problem(network: bool = False) -> str | None:
    """Why the sandbox cannot run here (one line), or None when a test sandbox started fine."""
    if bwrap_path() is None:
        return f"reward.sandbox: bwrap not found on PATH; {INSTALL_HINT}"
    scratch = os.path.realpath(os.environ.get("TMPDIR", "/tmp"))
    try:
        proc = subprocess.run(bwrap_command(scratch, network, "/") + ["true"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"reward.sandbox: bwrap does not start ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split())[:300] or f"exit code {proc.returncode}"
        return f"reward.sandbox: bwrap cannot create a sandbox here ({detail})"
    return None
