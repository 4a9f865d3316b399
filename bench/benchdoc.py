"""Helpers for the benchmarks' reports: one ``## title`` section of a shared markdown file, the CPU name.

Several benchmarks write into docs/benchmarks.md and docs/results.md; each owns one section.
"""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, title: str, section: str, heading: str = "# Benchmarks") -> None:
    """Replace the section headed ``## title`` in ``path`` by ``section`` (or append it)."""
    path = Path(path)
    text = path.read_text() if path.exists() else heading + "\n"
    pattern = re.compile(rf"^## {re.escape(title)}\s*$.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


def publish(section: str, title: str, markdown: str | None, heading: str = "# Benchmarks") -> None:
    """Print a benchmark's section and, when ``markdown`` names a file, write it there as ``## title``."""
    print(section)
    if markdown:
        write_section(Path(markdown), title, section, heading=heading)
        print(f"wrote the '## {title}' section of {markdown}")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
