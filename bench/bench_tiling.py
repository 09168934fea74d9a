"""Tiled against untiled denoiser evaluation (``relaydiff.tiling.TiledDenoiser``): accuracy and time.

Every figure that docs/networks.md quotes in "Sampling at other sizes and in tiles" comes from
the JSON this writes. The stage is the packaged 16→64 relay stage (``fluent-emoji-3d-16to64``
stage 2) with ``align = RelayCascade.size_multiple`` (8) and the default halo; its input is made
from seed 0's 64-px sample of that cascade (``cascade(seeds=[0])[-1]``).

* ``single_call``: one denoiser call on a 256×256 input (the 64-px image nearest-upsampled ×4
  plus relay noise at σ 0.5, float32): max abs and RMS difference of the tiled output from the
  untiled one for tile 64 and 128, ``stats`` ``previous`` (its 2nd call), ``fresh`` and
  ``tile``; and, with ``previous``, the RMS difference after calls 1..8 on the same input.
* ``sampling``: final images of whole-stage sampling, tiled against untiled with the same
  noise (RMS, max abs, wall seconds of one run each).
  (a) ``stage_reuse``: the 16→64 relay stage reused at 256 px from the 64-px image, float64
  state: through the cascade API (``cascade(seeds=[0], low_res=x64, to=256, tile=T,
  batch_invariant=False)``, T = 0, 64, 128; the cascade keeps ``stats`` at its default,
  ``previous``) and, for each ``stats`` mode, through the stage's relay sampler and
  autoguidance with ``TiledDenoiser`` built here as ``RelayCascade.run_stage`` builds it (its
  ``previous`` run is checked against the cascade API's: ``replica_vs_cascade_max_abs``).
  (b) ``upscale``: ``--cascade`` upscales one 256-px image (seed 0's 64-px sample of that
  cascade, ``cascade(seeds=[0], to=64)[-1]``, nearest ×4) to ``--size`` with the cascade's plan,
  ``--tile`` against untiled (both ``batch_invariant=False``, float32, torch's threads): RMS, max
  abs and seconds per output megapixel of each. ``null`` when that cascade is not installed.
  The first run of each size (untiled) includes its warm-up.
* ``call_time``: one denoiser call at 512×512, float32, 1 thread: untiled and in tiles of 128
  for each ``stats`` mode, fastest of ``--rounds`` runs after a warm-up.

Each part records its environment (CPU model, torch version, threads). Results go to ``--json``
(strict JSON, non-finite numbers as ``null``; parts not run are kept from the existing file) and
the console. ``--quick`` only checks that the code runs: tiny sizes (64-px inputs, the stage
from the 16-px image in (a), tile 32, two calls, one round) and the relay samplers cut to 8 of
40 steps (3 after truncation); it writes to a temporary file unless ``--json`` is given. Run the
full measurement on an idle machine (minutes; (b) at 1024 px takes the longest); on a busy one
more threads than free cores slow every part down many times (``--threads 1``).

    python bench/bench_tiling.py [--parts single_call,sampling,call_time] [--quick]
        [--cascade fluent-emoji-3d-16to256 --size 1024 --tile 256] [--rounds 3] [--threads N]
        [--json docs/images/bench_tiling.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from relaydiff.cascade import RelayCascade, seed_generators
from relaydiff.io.files import finite_or_none, read_json, write_json
from relaydiff.ops import relay_noise, upsample
from relaydiff.pretrained import pretrained_path
from relaydiff.samplers import relay_sample
from relaydiff.schedules import karras_sigmas
from relaydiff.tiling import STATS_MODES, TiledDenoiser

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("single_call", "sampling", "call_time")
STAGE_CASCADE = "fluent-emoji-3d-16to64"
STAGE = 1  # 0-based: the 16→64 relay stage
SIGMA = 0.5


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The sizes of one run: full, or ``--quick``."""

    single: int  # single_call input
    single_tiles: tuple[int, ...]
    calls: int  # previous: calls on the same input
    reuse_low: int  # sampling (a): seed 0's image of this size (16 or 64) to ×4
    reuse_tiles: tuple[int, ...]
    upscale_input: int  # sampling (b): input size
    upscale_size: int
    upscale_tile: int
    time_size: int  # call_time
    time_tile: int
    rounds: int
    relay_steps: int | None  # the relay stages' sampler steps (None: their own)


def fewer_steps(c: RelayCascade, steps: int | None) -> RelayCascade:
    """``c`` with every relay stage's sampler set to ``steps`` (``None``: unchanged)."""
    if steps is not None:
        c.configs = [cfg if cfg.kind != "relay" else dataclasses.replace(
            cfg, relay_sampler=dataclasses.replace(cfg.relay_sampler, steps=steps)) for cfg in c.configs]
    return c


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def environment() -> dict:
    return {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d")}


def difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Max abs and RMS of ``a − b`` (in float64)."""
    d = a.to(torch.float64) - b.to(torch.float64)
    return {"max_abs": d.abs().max().item(), "rms": d.square().mean().sqrt().item()}


def shown(d: dict) -> str:
    return f"max abs {d['max_abs']:.3e} RMS {d['rms']:.3e}"


class Stage:
    """The packaged 16→64 relay stage, seed 0's images of its cascade and inputs made from them."""

    def __init__(self, relay_steps: int | None) -> None:
        self.cascade = c = fewer_steps(RelayCascade.from_pretrained(STAGE_CASCADE), relay_steps)
        self.config, self.denoiser, self.guide = c.configs[STAGE], c.denoisers[STAGE], c.guides[str(STAGE)]
        self.align = c.size_multiple(STAGE)
        r, s = self.config.relay, self.config.relay_sampler
        self.sigmas = karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho, truncate=s.sigma_trunc)
        self.x16, self.x64 = c(seeds=[0])  # float32, in [-1, 1]
        self.relay = r

    def describe(self) -> dict:
        cfg = self.config
        return {"cascade": STAGE_CASCADE, "stage": STAGE + 1, "network": cfg.network,
                "relay": dataclasses.asdict(cfg.relay),
                "relay_sampler": dataclasses.asdict(cfg.relay_sampler),
                "guidance": dataclasses.asdict(cfg.guidance), "align": self.align,
                "sampling_steps": len(self.sigmas) - 1}

    def noisy(self, size: int) -> torch.Tensor:
        """The 64-px image nearest-upsampled to ``size`` plus relay noise at σ 0.5, float32."""
        gen = torch.Generator().manual_seed(0)
        r = self.relay
        up = upsample(self.x64, size // 64).to(torch.float32)
        return up + SIGMA * relay_noise(up.shape, r.scale, r.block_alpha, generator=gen,
                                        dtype=torch.float32)

    def tiled(self, net, tile: int, stats: str) -> TiledDenoiser:
        return TiledDenoiser(net, tile, align=self.align, stats=stats)

    def sample(self, low: torch.Tensor, wrap: Callable, dtype: torch.dtype) -> torch.Tensor:
        """The stage from ``low`` (seed 0's noise) with its relay sampler and autoguidance, its
        denoiser and guide passed through ``wrap``, as ``RelayCascade.run_stage`` runs it; float32
        like the cascade's outputs."""
        r, s = self.relay, self.config.relay_sampler
        gens = seed_generators([0])
        up = upsample(low.to(dtype), r.scale)
        n = relay_noise(up.shape, r.scale, r.block_alpha, generator=gens, variant=r.variant, dtype=dtype)
        den = self.cascade._guided(STAGE, wrap(self.denoiser), wrap(self.guide), None)
        with torch.no_grad():
            x = relay_sample(den, up + self.sigmas[0].item() * n, self.sigmas, r.schedule(s.prob_length),
                             r.scale, eta=s.eta, block_alpha=r.block_alpha, order=s.order,
                             variant=r.variant, generator=gens)
        return x.clamp(-1, 1).to(torch.float32)


def timed(f: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = f()
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------- single_call

def bench_single_call(stage: Stage, sizes: Sizes) -> dict:
    size = sizes.single
    print(f"== single_call: one denoiser call, {size}x{size}, sigma {SIGMA}, float32")
    x, sigma = stage.noisy(size), torch.tensor([SIGMA])
    with torch.no_grad():
        ref = stage.denoiser(x, sigma)
    untiled_rms = ref.square().mean().sqrt().item()
    print(f"  untiled output RMS {untiled_rms:.4f}")
    rows = []
    for tile in sizes.single_tiles:
        modes = {}
        for stats in STATS_MODES:
            td = stage.tiled(stage.denoiser, tile, stats)
            out = td(x, sigma)
            if stats == "previous":
                out = td(x, sigma)  # the second call uses the first call's statistics
            modes[stats] = difference(out, ref)
            print(f"  tile {tile:3d} halo {td.halo:2d} stats {stats:8s}: {shown(modes[stats])}")
        td = stage.tiled(stage.denoiser, tile, "previous")
        after = [difference(td(x, sigma), ref)["rms"] for _ in range(sizes.calls)]
        print(f"  tile {tile:3d} previous, RMS after calls 1..{sizes.calls} on the same input: "
              + " ".join(f"{v:.4f}" for v in after))
        rows.append({"tile": tile, "halo": td.halo, "stats": modes, "previous_rms_after_calls": after})
    return {"size": size, "sigma": SIGMA, "dtype": "float32", "untiled_rms": untiled_rms,
            "note": "previous: its 2nd call on the input", "tiles": rows}


# --------------------------------------------------------------------------- sampling

def bench_stage_reuse(stage: Stage, sizes: Sizes) -> dict:
    low = {16: stage.x16, 64: stage.x64}[sizes.reuse_low]
    size = low.shape[-1] * stage.relay.scale
    c, dtype = stage.cascade, torch.float64
    print(f"== sampling (a): the 16→64 relay stage from {low.shape[-1]} px to {size} px, float64 state, "
          f"{len(stage.sigmas) - 1} steps, autoguidance {stage.config.guidance.scale}")

    def api(tile: int) -> torch.Tensor:
        return c(seeds=[0], low_res=low, to=size, tile=tile, batch_invariant=False, dtype=dtype)[-1]

    ref, ref_s = timed(lambda: api(0))
    print(f"  cascade API untiled: {ref_s:.1f} s")
    cascade_rows, api_out = [], {}
    for tile in sizes.reuse_tiles:
        api_out[tile], wall = timed(lambda tile=tile: api(tile))
        d = difference(api_out[tile], ref)
        cascade_rows.append({"tile": tile, "halo": stage.tiled(stage.denoiser, tile, "previous").halo,
                             **d, "wall_s": wall})
        print(f"  cascade API tile {tile:3d}: final image {shown(d)} ({wall:.1f} s)")
    own_ref, own_ref_s = timed(lambda: stage.sample(low, lambda m: m, dtype))
    mode_rows, replica = [], {"untiled": difference(own_ref, ref)["max_abs"]}
    print(f"  own sampler untiled: {own_ref_s:.1f} s (max abs from the cascade API's "
          f"{replica['untiled']:.1e})")
    for tile in sizes.reuse_tiles:
        for stats in STATS_MODES:
            out, wall = timed(lambda tile=tile, stats=stats: stage.sample(
                low, lambda m: stage.tiled(m, tile, stats), dtype))
            d = difference(out, ref)
            mode_rows.append({"tile": tile, "stats": stats, **d, "wall_s": wall})
            if stats == "previous":
                replica[f"tile{tile}"] = difference(out, api_out[tile])["max_abs"]
            print(f"  tile {tile:3d} stats {stats:8s}: final image {shown(d)} ({wall:.1f} s)")
    return {"low_res": low.shape[-1], "size": size, "dtype": "float64", "seed": 0,
            "steps": len(stage.sigmas) - 1, "untiled_wall_s": ref_s, "cascade": cascade_rows,
            "stats_modes": mode_rows, "own_untiled_wall_s": own_ref_s,
            "replica_vs_cascade_max_abs": replica}


def bench_upscale(name: str, sizes: Sizes) -> dict | None:
    if not (pretrained_path(name) / "cascade.json").is_file():
        print(f"== sampling (b): {name} is not installed ({pretrained_path(name)}); skipped")
        return None
    c = fewer_steps(RelayCascade.from_pretrained(name), sizes.relay_steps)
    start, size, tile = sizes.upscale_input, sizes.upscale_size, sizes.upscale_tile
    plan = c.plan(start, size)
    print(f"== sampling (b): {name} upscales one {start}-px image to {size} px, tile {tile} against "
          f"untiled, float32, {torch.get_num_threads()} threads; plan (stage, size) "
          + ", ".join(f"({k + 1}, {r})" for k, r in plan))
    low = upsample(c(seeds=[0], to=64)[-1], start // 64)
    outs, secs = {}, {}
    for t in (0, tile):
        outs[t], secs[t] = timed(lambda t=t: c(seeds=[0], low_res=low, to=size, tile=t,
                                                 batch_invariant=False, dtype=torch.float32)[-1])
    per_mp = {t: v / (size * size / 1e6) for t, v in secs.items()}
    d = difference(outs[tile], outs[0])
    print(f"  final image {shown(d)}; untiled {per_mp[0]:.2f} s/MP, tiled {per_mp[tile]:.2f} s/MP "
          f"(ratio {per_mp[tile] / per_mp[0]:.3f})")
    return {"cascade": name, "input": start, "size": size, "tile": tile, "dtype": "float32",
            "seed": 0, "plan": [[k + 1, r] for k, r in plan], **d,
            "wall_s": {"untiled": secs[0], "tiled": secs[tile]},
            "seconds_per_megapixel": {"untiled": per_mp[0], "tiled": per_mp[tile]},
            "ratio": per_mp[tile] / per_mp[0]}


# --------------------------------------------------------------------------- call_time

def bench_call_time(stage: Stage, sizes: Sizes) -> dict:
    size, tile, rounds = sizes.time_size, sizes.time_tile, sizes.rounds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = environment()
        print(f"== call_time: one call, {size}x{size}, float32, 1 thread (fastest of {rounds} after a "
              "warm-up)")
        x, sigma = stage.noisy(size), torch.tensor([SIGMA])

        def fastest(f: Callable[[], object]) -> dict:
            f()
            runs = [timed(f)[1] for _ in range(rounds)]
            return {"fastest_s": min(runs), "runs_s": runs}

        def untiled() -> torch.Tensor:
            with torch.no_grad():
                return stage.denoiser(x, sigma)

        rows = [{"tile": 0, "stats": None, **fastest(untiled)}]
        for stats in ("tile", "previous", "fresh"):
            td = stage.tiled(stage.denoiser, tile, stats)
            rows.append({"tile": tile, "halo": td.halo, "stats": stats,
                         **fastest(lambda td=td: td(x, sigma))})
        for row in rows:
            what = ("untiled" if not row["tile"]
                    else f"tile {row['tile']} halo {row['halo']} {row['stats']:8s}")
            print(f"  {what}: {row['fastest_s']:.2f} s (runs "
                  + ", ".join(f"{v:.2f}" for v in row["runs_s"]) + ")")
    finally:
        torch.set_num_threads(threads)
    return {"environment": env, "size": size, "dtype": "float32", "sigma": SIGMA, "rounds": rounds,
            "calls": rows}


# --------------------------------------------------------------------------- main

FULL = Sizes(single=256, single_tiles=(64, 128), calls=8, reuse_low=64, reuse_tiles=(64, 128),
             upscale_input=256, upscale_size=1024, upscale_tile=256, time_size=512, time_tile=128,
             rounds=3, relay_steps=None)
QUICK = Sizes(single=64, single_tiles=(32,), calls=2, reuse_low=16, reuse_tiles=(32,),
              upscale_input=64, upscale_size=256, upscale_tile=32, time_size=64, time_tile=32,
              rounds=1, relay_steps=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one round: only checks that the code runs")
    parser.add_argument("--cascade", default="fluent-emoji-3d-16to256",
                        help="packaged cascade of sampling (b) (skipped when not installed)")
    parser.add_argument("--size", type=int, help="sampling (b): output size (default 1024; quick 256)")
    parser.add_argument("--tile", type=int, help="sampling (b): tile (default 256; quick 32)")
    parser.add_argument("--rounds", type=int, help="call_time: timed runs (default 3; quick 1)")
    parser.add_argument("--threads", type=int, help="torch threads of single_call and sampling "
                        "(default: torch's); call_time always runs on 1")
    parser.add_argument("--json", type=Path, help="output (default docs/images/bench_tiling.json; "
                        "quick: a file in the temporary folder)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    sizes = QUICK if args.quick else FULL
    overrides = {"upscale_size": args.size, "upscale_tile": args.tile, "rounds": args.rounds}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.json or (Path(tempfile.gettempdir()) / "bench_tiling_quick.json" if args.quick
                         else ROOT / "docs" / "images" / "bench_tiling.json")
    result = read_json(path) if path.exists() and not args.quick else {}
    stage = Stage(sizes.relay_steps)
    env = environment()
    print(f"{env['cpu']}, torch {env['torch']}, {env['threads']} threads, align {stage.align}"
          + (" (quick)" if args.quick else ""))
    result.update({"quick": args.quick, "stage": stage.describe()})
    if "single_call" in parts:
        result["single_call"] = {"environment": env, **bench_single_call(stage, sizes)}
    if "sampling" in parts:
        result["sampling"] = {"environment": env, "stage_reuse": bench_stage_reuse(stage, sizes),
                              "upscale": bench_upscale(args.cascade, sizes)}
    if "call_time" in parts:
        result["call_time"] = bench_call_time(stage, sizes)
    write_json(finite_or_none(result), path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
