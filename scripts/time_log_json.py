"""The wall-clock, CPU time and peak memory of a command run under ``/usr/bin/time -v``, as the
strict JSON the docs cite (e.g. docs/images/study_quick_timing.json for docs/study.md).

    /usr/bin/time -v relaydiff study --preset quick --out runs/quick > quick.log 2>&1
    python scripts/time_log_json.py quick.log --what "relaydiff study --preset quick, idle" \
        --out docs/images/study_quick_timing.json
"""

from __future__ import annotations

import argparse
import os
import platform
import re
from datetime import date
from pathlib import Path

from relaydiff.io.files import write_json

FIELDS = {  # /usr/bin/time -v line → JSON key
    "Command being timed": "command",
    "User time (seconds)": "user_seconds",
    "System time (seconds)": "system_seconds",
    "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall_seconds",
    "Maximum resident set size (kbytes)": "peak_rss_mib",
    "Exit status": "exit_status",
}


def seconds(clock: str) -> float:
    """``h:mm:ss`` or ``m:ss.ss`` as seconds."""
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


def parse(log: str) -> dict:
    out: dict = {}
    for line in log.splitlines():
        key, _, value = line.strip().partition(": ")
        name = FIELDS.get(key)
        if name is None:
            continue
        value = value.strip()
        if name == "command":
            out[name] = value.strip('"')
        elif name == "wall_seconds":
            out[name] = round(seconds(value), 1)
        elif name == "peak_rss_mib":
            out[name] = round(int(value) / 1024)
        elif name == "exit_status":
            out[name] = int(value)
        else:
            out[name] = float(value)
    missing = sorted(set(FIELDS.values()) - out.keys())
    if missing:
        raise SystemExit(f"no /usr/bin/time -v report in the log (missing {', '.join(missing)})")
    return out


def cpu_name() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = re.search(r"model name\s*:\s*(.+)", text)
    return (found.group(1).strip() if found else platform.processor()) or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="the command's output with /usr/bin/time -v's report")
    parser.add_argument("--what", required=True, help="what was run, and how (idle, cache state)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    record = {"what": args.what, "date": date.today().isoformat(), "cpu": cpu_name(),
              "logical_cpus": os.cpu_count(), **parse(args.log.read_text())}
    write_json(record, args.out)
    print(record)


if __name__ == "__main__":
    main()
