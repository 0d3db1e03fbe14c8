"""What the benchmarks print about the machine they ran on (shared by core.py and durable.py).

The benchmarks are run as scripts (``python bench/core.py``), so ``bench/`` is on
``sys.path`` and they import this module as ``_machine``.
"""

import os
import platform
from datetime import UTC, datetime
from importlib import metadata


def version(dist: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(packages: tuple[str, ...] = ()) -> dict[str, str]:
    """CPU, cores, OS, Python, the versions of ``packages``, the date and the load average."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} logical, {usable} usable",
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }
    for dist in packages:
        info[dist] = version(dist)
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    info["load average"] = load_average()
    return info


def load_average() -> str:
    """Other processes on the machine skew the figures; this shows whether there were any."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


def print_machine(info: dict[str, str]) -> None:
    for key, value in info.items():
        print(f"{key + ':':<24}{value}")
