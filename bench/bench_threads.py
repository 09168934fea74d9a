"""Throughput of CPU training and batched sampling on an idle and on a shared machine, with
torch's default OpenMP waiting (long-spinning workers) against relaydiff's thread policy
(``GOMP_SPINCOUNT=1000``, src/relaydiff/app/threads.py), measured in one run.

Each measurement is a fresh process running a real command through the command line's code:
"policy" through ``relaydiff.app.cli.main`` (which applies the policy before torch loads),
"torch default" through the same click command without it. ``--busy N`` runs N processes that
spin on the CPU beside each measurement (another user's job on a shared machine); every
workload runs idle and with N busy processes, the two policies alternating within each round.

* ``train``: ``relaydiff train stage1_16`` (the demo's stage-1 network, batch 32, 16 px) on
  synthetic images for ``--train-seconds``; images/s = images seen over the training time
  that the run's checkpoint records.
* ``relay``: ``relaydiff train relay_16to64`` (the demo's relay stage, batch 8, 64 px) likewise.
* ``sample --fast``: the packaged cascade, ``--images`` seeds in batches of 16 on all threads;
  images/s of the whole command after imports (cascade loading included).
* ``sample``: the exact mode (one image per thread), for comparison.

    python bench/bench_threads.py [--busy 1] [--rounds 2] [--train-seconds 30] [--images 8]

Prints the table that docs/train.md#threads-on-a-shared-machine quotes, and ``--json FILE``
writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from training_helpers import image_folder

RUNNER = """
import json, sys, time
policy, args = sys.argv[1], sys.argv[2:]
if policy == "policy":
    from relaydiff.app.cli import main as run
    from relaydiff.app.threads import apply_thread_policy
    apply_thread_policy()  # what main() does first; here before the import of torch below
else:
    from relaydiff.app.cli import cli
    def run(a):
        cli.main(args=a, prog_name="relaydiff", standalone_mode=False)
import torch  # imported here by both, so that the timing below excludes it
start = time.perf_counter()
run(args)
seconds = time.perf_counter() - start
import os
print(json.dumps({"seconds": seconds, "wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                  "threads": torch.get_num_threads()}))
"""
SPIN = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"
POLICIES = ("torch default", "policy")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def run_command(policy: str, args: list[str]) -> dict:
    """``relaydiff ARGS`` in a fresh process: through the entry point (``policy``), through the
    bare click command (``torch default``) or, for a candidate ``NAME=VALUE``, through the bare
    command with that OpenMP variable set."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if "=" in policy:
        key, value = policy.split("=", 1)
        env[key] = value
    done = subprocess.run([sys.executable, "-c", RUNNER, "policy" if policy == "policy" else "off",
                           *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({policy}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_rate(run: Path) -> float:
    """Images/s of a training run: images seen over the training wall-clock of its newest
    checkpoint (``cost`` in ``state.json``; start-up and data loading excluded)."""
    newest = sorted((run / "checkpoints").glob("ckpt-*"))[-1]
    cost = json.loads((newest / "state.json").read_text())["cost"]
    return cost["images_seen"] / cost["wall_seconds"]


def measure(workload: str, policy: str, tmp: Path, data: dict[str, Path], args) -> float:
    out = Path(tempfile.mkdtemp(dir=tmp))
    if workload in ("train", "relay"):
        config, path = ("stage1_16", data["16"]) if workload == "train" else ("relay_16to64", data["64"])
        run_command(policy, ["train", config, "--set", f"data.path={path}", "--out", str(out / "run"),
                             "--max-minutes", str(args.train_seconds / 60), "--no-progress"])
        return train_rate(out / "run")
    fast = ["--fast", "--batch", "16"] if workload == "sample --fast" else []
    result = run_command(policy, ["sample", "--seeds", f"0-{args.images - 1}", "--out", str(out / "s"),
                                  *fast])
    return args.images / result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=1, help="Spinning processes beside [1].")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds per setting (median) [2].")
    parser.add_argument("--train-seconds", type=float, default=30.0)
    parser.add_argument("--images", type=int, default=8, help="Seeds per sampling run [8].")
    parser.add_argument("--workloads", default="train,relay,sample --fast,sample")
    parser.add_argument("--json", type=Path, default=None, help="Also write the table here.")
    parser.add_argument("--also", default="", help="Other candidates, e.g. GOMP_SPINCOUNT=10000 "
                                                   "(comma-separated NAME=VALUE).")
    args = parser.parse_args()
    policies = [*POLICIES, *(c.strip() for c in args.also.split(",") if c.strip())]
    workloads = [w.strip() for w in args.workloads.split(",")]
    rates: dict[tuple[str, int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = {"16": image_folder(tmp / "d16", 256, 16), "64": image_folder(tmp / "d64", 64, 64)}
        for busy in (0, args.busy):
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
            try:
                time.sleep(0.5)
                for _ in range(args.rounds):
                    for workload in workloads:
                        for policy in policies:
                            rate = measure(workload, policy, tmp, data, args)
                            rates.setdefault((workload, busy, policy), []).append(rate)
                            print(f"  {workload:<14} busy {busy} {policy:<22} {rate:8.2f} img/s",
                                  flush=True)
            finally:
                for p in spinners:
                    p.kill()
    med = {k: statistics.median(v) for k, v in rates.items()}
    rows = []
    print(f"\n{cpu_name()}, {os.cpu_count()} logical CPUs, {args.rounds} rounds (median), "
          f"{args.busy} busy process(es) beside the 'busy' column")
    print(f"{'workload':<14} {'policy':<22} {'idle img/s':>10} {'busy img/s':>10} {'busy/idle':>9}")
    for workload in workloads:
        for policy in policies:
            idle, busy = med[(workload, 0, policy)], med[(workload, args.busy, policy)]
            rows.append({"workload": workload, "policy": policy, "idle": idle, "busy": busy,
                         "busy_over_idle": busy / idle})
            print(f"{workload:<14} {policy:<22} {idle:10.2f} {busy:10.2f} {busy / idle:9.2f}")
        before, after = med[(workload, 0, "torch default")], med[(workload, 0, "policy")]
        print(f"{'':<14} idle: policy / torch default = {after / before:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "busy_processes": args.busy,
                                         "rounds": args.rounds, "images": args.images,
                                         "train_seconds": args.train_seconds, "rows": rows,
                                         "runs": {f"{w}|{b}|{p}": v for (w, b, p), v in rates.items()}},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
