"""``relaydiff convert`` on a large training state: peak memory and time against a plain load.

Makes a ``.pt`` training state in RDM's format (an ADM network of about 60 M parameters, its
EMA copy under ``ema`` and ``net``: ≥ 200 MB) with the test helpers, then measures in fresh
processes: ``relaydiff convert`` (peak RSS, wall-clock) and a plain ``torch.load`` of the same
file (persistence records resolved to plain dicts, nothing else). Targets: peak memory ≤ 1.5×
the file size plus the model, time ≤ 2× the plain load (medians of interleaved rounds), timed
inside each process after its imports and, as a user sees it, as whole commands
(``relaydiff convert`` against ``python -c "import torch; torch.load(FILE)"``). A conversion must
also put its output on disk, so the bench times that alone too (the converted weights' bytes
written and fsynced): the plain load plus that write is the floor a conversion can reach on this
disk.

    python bench/bench_convert.py [--channels 128]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = 3
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PLAIN_LOAD = """
import sys, time, types, torch
mod = types.ModuleType("torch_utils.persistence"); mod._reconstruct_persistent_obj = lambda meta: meta
sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": mod,
                    "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": types.ModuleType("dnnlib.util")})
t = time.perf_counter(); torch.load(sys.argv[1], map_location="cpu", weights_only=False)
print(time.perf_counter() - t)
"""
CONVERT = """
import sys, time
from relaydiff.released.convert import convert
t = time.perf_counter(); convert(sys.argv[1], sys.argv[2])
print(time.perf_counter() - t)
"""


def child_seconds(script: str, *args: str) -> float:
    """The seconds a fresh process reports for its timed part (after its imports)."""
    run = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                         check=True)
    return float(run.stdout)


def command_seconds(cmd: list[str]) -> float:
    """Wall-clock seconds of a whole command, process start and imports included."""
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True)
    return time.perf_counter() - start


def peak_rss_and_time(cmd: list[str]) -> tuple[float, float]:
    """(peak resident MiB, seconds) of a child process, from ``/usr/bin/time -v``."""
    start = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    line = next(ln for ln in r.stderr.splitlines() if "Maximum resident set size" in ln)
    return int(line.split(":")[1]) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=128)
    args = parser.parse_args()

    from released_helpers import edm_network_record, write_training_state

    from relaydiff.networks import build_network
    from relaydiff.precond import EDMPrecond

    kwargs = dict(model_channels=args.channels, channel_mult=[1, 2, 3, 4], num_blocks=3,
                  attn_resolutions=[32, 16, 8], dropout=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        den = EDMPrecond(build_network({"name": "unet", "img_resolution": 64, **kwargs}))
        params = sum(p.numel() for p in den.parameters())
        path = Path(tmp) / "training-state.pt"
        write_training_state(path, edm_network_record(den, kwargs, 64))
        del den
        size = path.stat().st_size / 2**20
        model = params * 4 / 2**20
        base_rss, _ = peak_rss_and_time([sys.executable, "-c", "import torch"])
        plain_rss, _ = peak_rss_and_time([sys.executable, "-c", PLAIN_LOAD, str(path)])
        conv_rss, conv_wall = peak_rss_and_time([sys.executable, "-m", "relaydiff", "convert",
                                                 str(path), "--out", str(Path(tmp) / "stage")])
        # Disk speed varies between runs, so the three timings are interleaved over ROUNDS rounds
        # and their medians compared. Load and conversion each run in a fresh process and time
        # their own work, after the imports (the conversion also builds the network).
        rounds: dict[str, list[float]] = {"plain": [], "convert": [], "write": [],
                                          "plain_cmd": [], "convert_cmd": []}
        for r in range(ROUNDS):
            rounds["plain"].append(child_seconds(PLAIN_LOAD, str(path)))
            rounds["convert"].append(child_seconds(CONVERT, str(path), str(Path(tmp) / f"stage-{r}")))
            rounds["plain_cmd"].append(command_seconds([sys.executable, "-c", PLAIN_LOAD, str(path)]))
            rounds["convert_cmd"].append(command_seconds(
                [sys.executable, "-m", "relaydiff", "convert", str(path), "--out",
                 str(Path(tmp) / f"cmd-{r}")]))
            shutil.rmtree(Path(tmp) / f"cmd-{r}")
            written = (Path(tmp) / f"stage-{r}" / "model.safetensors").read_bytes()
            t = time.perf_counter()
            with open(Path(tmp) / "copy.bin", "wb") as f:
                f.write(written)
                f.flush()
                os.fsync(f.fileno())
            rounds["write"].append(time.perf_counter() - t)
            shutil.rmtree(Path(tmp) / f"stage-{r}")
        plain, conv, write, plain_cmd, conv_cmd = (
            statistics.median(rounds[k]) for k in ("plain", "convert", "write", "plain_cmd",
                                                    "convert_cmd"))
    print(f"file {size:.0f} MiB, model {params / 1e6:.1f} M parameters ({model:.0f} MiB fp32)")
    print(f"peak RSS above `import torch` ({base_rss:.0f} MiB): convert {conv_rss - base_rss:.0f} MiB "
          f"(target ≤ {1.5 * size + model:.0f} = 1.5 × file + model), plain torch.load "
          f"{plain_rss - base_rss:.0f} MiB")
    for k, v in rounds.items():
        print(f"{k:11s} " + "  ".join(f"{x:.2f} s" for x in v))
    print(f"time (medians of {ROUNDS}): convert {conv:.2f} s in its process ({conv_wall:.2f} s as a "
          f"command), plain torch.load {plain:.2f} s → ratio {conv / plain:.2f} (target ≤ 2)")
    print(f"disk: writing and fsyncing the {len(written) / 2**20:.0f} MiB output alone takes "
          f"{write:.2f} s; floor for a conversion: load + write = {plain + write:.2f} s "
          f"(ratio {(plain + write) / plain:.2f})")
    print(f"as commands (medians of {ROUNDS}, process start and imports included): relaydiff convert "
          f"{conv_cmd:.2f} s, python -c 'torch.load(FILE)' {plain_cmd:.2f} s → ratio "
          f"{conv_cmd / plain_cmd:.2f} (target ≤ 2)")


if __name__ == "__main__":
    main()
