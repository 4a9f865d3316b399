"""Java, the user's Ludii jar, and progrl's worker compiled against it.

The worker (``java/ProgrlLudiiWorker.java``, progrl's own code) is compiled with ``javac`` at first
use into ``<cache>/ludii/worker-<key>/``, where the key hashes the jar's content and the worker's
source: a new jar or a new worker gets a fresh build, an unchanged pair reuses it. The build is
written to a temporary folder and renamed into place, so concurrent runs and interrupted builds
never see half a build.

Every problem a user can fix is a :class:`LudiiSetupError` (a ValueError): one line naming it; the
command line prints it and exits with code 2.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

WORKER_CLASS = "ProgrlLudiiWorker"
WORKER_SOURCE = Path(__file__).with_name("java") / f"{WORKER_CLASS}.java"
# classes every Ludii jar has (the official player jar and jars built from source)
LUDII_MARKERS = ("compiler/Compiler.class", "game/Game.class", "other/context/Context.class")
GET_A_JAR = "download the Ludii player jar from https://ludii.games/download.php (see docs/ludii.md)"


class LudiiSetupError(ValueError):
    """Java, the jar or the game data cannot be used; the message says what to fix."""


def cache_root() -> Path:
    """``$PROGRL_CACHE/ludii`` or ``~/.cache/progrl/ludii``."""
    env = os.environ.get("PROGRL_CACHE")
    base = Path(env).expanduser() if env else Path("~/.cache/progrl").expanduser()
    return base / "ludii"


def find_tool(name: str) -> str:
    """Path of ``java`` or ``javac``: ``$JAVA_HOME/bin`` first, then ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise LudiiSetupError(f"ludii: {name} not found: install a Java development kit 11 or newer "
                              f"(e.g. apt-get install default-jdk-headless) or set JAVA_HOME, or use "
                              f"--set task_options.evaluator=validator (a structural proxy without Java)")
    return found


def resolve_jar(option: str | None) -> Path:
    """The jar from ``task_options.jar``, else ``$LUDII_JAR``; checked to be a Ludii jar."""
    raw = option or os.environ.get("LUDII_JAR")
    if not raw:
        raise LudiiSetupError(f"ludii: no Ludii jar: set task_options.jar or LUDII_JAR ({GET_A_JAR}), or use "
                              f"--set task_options.evaluator=validator with a folder of .lud files")
    path = Path(raw).expanduser()
    if not path.is_file():
        raise LudiiSetupError(f"ludii: jar not found: {path} ({GET_A_JAR})")
    check_ludii_jar(path)
    return path.resolve()


def check_ludii_jar(path: Path) -> None:
    """Raise unless ``path`` is a zip holding Ludii's compiler and game classes."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError) as err:
        raise LudiiSetupError(f"ludii: {path} is not a jar file ({err})") from None
    missing = [m for m in LUDII_MARKERS if m not in names]
    if missing:
        raise LudiiSetupError(f"ludii: {path} is not a Ludii jar (it has no {missing[0]}); {GET_A_JAR}")


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def jar_key(jar: Path) -> str:
    """A short key of the jar's content (for caches of things derived from it)."""
    return file_digest(jar)[:16]


def worker_key(jar: Path) -> str:
    h = hashlib.sha256()
    h.update(file_digest(jar).encode())
    h.update(WORKER_SOURCE.read_bytes())
    return h.hexdigest()[:16]


def compile_worker(jar: Path, cache: Path | None = None) -> Path:
    """The folder holding the compiled worker for ``jar`` (compiled now unless cached)."""
    cache = cache or cache_root()
    target = cache / f"worker-{worker_key(jar)}"
    if (target / f"{WORKER_CLASS}.class").is_file():
        return target
    javac = find_tool("javac")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".worker-", dir=cache))
    try:
        proc = subprocess.run([javac, "-encoding", "UTF-8", "-nowarn", "-d", str(tmp), "-cp", str(jar),
                               str(WORKER_SOURCE)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            detail = next((ln for ln in (proc.stderr or proc.stdout).splitlines() if "error" in ln),
                          (proc.stderr or proc.stdout).strip()[:300])
            raise LudiiSetupError(f"ludii: the worker does not compile against {jar} (is it Ludii 1.3 or newer?): "
                                  f"{detail.strip()}")
        try:
            os.replace(tmp, target)
        except OSError:  # another run finished the same build first
            if not (target / f"{WORKER_CLASS}.class").is_file():
                raise
    except subprocess.TimeoutExpired:
        raise LudiiSetupError("ludii: javac did not finish within 300 s") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def java_command(jar: Path, classes: Path, *, xmx_mb: int, verbose: bool = False, warmup: int = 20,
                 extra_jvm_args: tuple[str, ...] = ()) -> list[str]:
    """The command line of one worker JVM."""
    cmd = [find_tool("java"), f"-Xmx{xmx_mb}m", "-Xss8m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError",
           "-Djava.awt.headless=true", *extra_jvm_args, "-cp", f"{classes}{os.pathsep}{jar}", WORKER_CLASS,
           "--warmup", str(warmup)]
    if verbose:
        cmd.append("--verbose")
    return cmd
