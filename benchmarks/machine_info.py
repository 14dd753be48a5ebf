"""The CPU's model name, for the machine line every benchmark result carries (not a benchmark itself)."""

import platform
from pathlib import Path


def cpu_model() -> str:
    """`model name` from /proc/cpuinfo (e.g. "AMD EPYC ..."), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
