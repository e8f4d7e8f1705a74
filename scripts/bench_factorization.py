"""Benchmark crucible's bounded-memory thin SVD / SVF against ``torch.linalg.svd(full_matrices=False)``.

Every measurement runs in its own subprocess, so peak RSS (``ru_maxrss``) is clean. Each child builds
seeded float32 weights of the real TRINITY shapes, records its RSS, runs one operation, and reports the
wall time, the CPU time (user + sys), the peak RSS and the extra RSS over the weights (peak minus RSS
before the operation).

Operations (per distinct shape):

* ``svd``      baseline: ``torch.linalg.svd(W.double(), full_matrices=False)``
* ``factors``  crucible: ``compute_factors(W)`` (TSQR + SVD of the n x n factor; S and V only)
* ``adapt-ref`` baseline end to end: dense float64 SVD, SVF formula, cast to float32
* ``adapt``    crucible end to end: ``compute_factors`` + ``svf_reconstruct`` to float32

Whole adapter (nine matrices, embedding and lm_head as two distinct matrices):

* ``all-svd``       baseline: nine dense float64 SVDs, one after another
* ``cache-build``   crucible: ``FactorCache.get_or_compute`` on an empty cache (factor + write)
* ``all-adapt-ref`` baseline per vector: nine dense SVDs + SVF reconstructions
* ``cache-adapt``   crucible per vector: cache hit + nine ``svf_reconstruct``

Small shapes run ``--repeat`` times (fastest kept: the machine may be shared); the big ones once.
Ratios are crucible / baseline from the same run. Usage::

    .venv/bin/python scripts/bench_factorization.py            # everything (several minutes on 2 cores)
    .venv/bin/python scripts/bench_factorization.py --skip-embedding
    .venv/bin/python scripts/bench_factorization.py --threads 1   # steadier when other jobs share the CPUs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EMBED_ROWS = 151936


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fp:
        return int(fp.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# --------------------------------------------------------------------------------------------------
# child side
# --------------------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(
    op: str, shape: tuple[int, int] | None, block_rows: int, cache_dir: str | None, threads: int
) -> dict[str, Any]:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    from crucible.factor_cache import FactorCache
    from crucible.factorization import compute_factors, svf_reconstruct, svf_scale
    from crucible.router_vector import TRINITY_SVF_SLOTS

    def weights(rows: int, cols: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn((rows, cols), generator=gen, dtype=torch.float32).mul_(0.02)

    def offsets(k: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(k, generator=gen, dtype=torch.float64).mul_(0.1)

    def dense_adapt(w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        u.mul_(s * (1.0 + d) * svf_scale(s, d))
        adapted: torch.Tensor = (u @ vh).to(torch.float32)
        return adapted

    if shape is not None:
        matrices = [("w", weights(*shape, seed=1))]
    else:
        matrices = [(slot[0], weights(*slot[1], seed=i)) for i, slot in enumerate(TRINITY_SVF_SLOTS)]
    vectors = {name: offsets(min(w.shape), seed=100 + i) for i, (name, w) in enumerate(matrices)}
    cache = FactorCache(
        cache_dir or tempfile.mkdtemp(), factorizer=lambda w: compute_factors(w, block_rows=block_rows)
    )
    if op == "cache-adapt":  # warm the cache outside the timed region
        cache.get_or_compute(matrices)
    rss_before = _rss_bytes()
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    if op in ("svd", "all-svd"):
        for _, w in matrices:
            torch.linalg.svd(w.double(), full_matrices=False)
    elif op == "factors":
        for _, w in matrices:
            compute_factors(w, block_rows=block_rows)
    elif op in ("adapt-ref", "all-adapt-ref"):
        for name, w in matrices:
            dense_adapt(w, vectors[name])
    elif op == "adapt":
        for name, w in matrices:
            svf_reconstruct(w, compute_factors(w, block_rows=block_rows), vectors[name], block_rows=block_rows)
    elif op == "cache-build":
        result = cache.get_or_compute(matrices)
        assert not result.from_cache
    elif op == "cache-adapt":
        result = cache.get_or_compute(matrices)
        assert result.from_cache and result.factorizations == 0
        for name, w in matrices:
            svf_reconstruct(w, result.factors[name], vectors[name], block_rows=block_rows)
    else:
        raise SystemExit(f"unknown op {op!r}")
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start
    peak = _peak_bytes()
    return {"seconds": seconds, "cpu": cpu, "peak": peak, "extra": max(0, peak - rss_before), "base": rss_before}


# --------------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------------


def _run(op: str, shape: tuple[int, int] | None, block_rows: int, threads: int, repeat: int = 1) -> dict[str, Any]:
    """Run ``op`` in ``repeat`` fresh children; keep the fastest (peak RSS is the same run's)."""
    runs = [_run_once(op, shape, block_rows, threads) for _ in range(max(1, repeat))]
    return min(runs, key=lambda r: float(r["seconds"]))


def _run_once(op: str, shape: tuple[int, int] | None, block_rows: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-factors-") as cache_dir:
        args = [sys.executable, __file__, "--child", op, "--block-rows", str(block_rows), "--cache-dir", cache_dir]
        args += ["--threads", str(threads)]
        if shape is not None:
            args += ["--shape", f"{shape[0]}x{shape[1]}"]
        done = subprocess.run(args, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _mib(n: int) -> str:
    return f"{n / 2**20:8.0f}"


def _row(label: str, base: dict[str, Any], ours: dict[str, Any]) -> str:
    return (
        f"{label:<22} {base['seconds']:8.2f} {ours['seconds']:8.2f} {ours['seconds'] / base['seconds']:6.2f}x"
        f" {base['cpu']:8.2f} {ours['cpu']:8.2f} {ours['cpu'] / max(base['cpu'], 1e-9):6.2f}x"
        f" {_mib(base['peak'])} {_mib(ours['peak'])} {ours['peak'] / base['peak']:6.2f}x"
        f" {_mib(base['extra'])} {_mib(ours['extra'])} {ours['extra'] / max(base['extra'], 1):6.2f}x"
    )


HEADER = (
    f"{'':<22} {'base s':>8} {'ours s':>8} {'ratio':>7} {'base cpu':>8} {'ours cpu':>8} {'ratio':>7}"
    f" {'base MiB':>8} {'ours MiB':>8} {'ratio':>7}"
    f" {'b extra':>8} {'o extra':>8} {'ratio':>7}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--block-rows", type=int, default=16384, help="TSQR / reconstruction block rows")
    parser.add_argument("--skip-embedding", action="store_true", help="leave out the 151936 x 1024 matrices")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per child (0: torch's default; 1 is steadiest when busy)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="children per small-shape measurement (fastest kept; big ones run once)"
    )
    args = parser.parse_args()
    if args.child:
        shape = tuple(int(v) for v in args.shape.split("x")) if args.shape else None
        print(json.dumps(_child(args.child, shape, args.block_rows, args.cache_dir, args.threads)))  # type: ignore[arg-type]
        return

    import torch

    from crucible.router_vector import TRINITY_SVF_SLOTS

    threads = args.threads or torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {threads} threads per child, {os.cpu_count()} cpus, "
        f"load average {os.getloadavg()[0]:.2f}, block_rows {args.block_rows}"
    )
    print(
        "s: wall seconds of the operation; cpu: user+sys seconds of it; MiB: peak RSS of the child; "
        "extra: peak minus RSS before the op"
    )
    print("ratio = crucible / torch.linalg.svd baseline, same run\n")
    shapes: list[tuple[int, int]] = []
    for _, shape, _, _ in TRINITY_SVF_SLOTS:
        if shape not in shapes and not (args.skip_embedding and shape[0] == EMBED_ROWS):
            shapes.append(shape)
    def compare(label: str, base_op: str, our_op: str, shape: tuple[int, int] | None) -> None:
        repeat = args.repeat if shape is not None and shape[0] != EMBED_ROWS else 1
        base = _run(base_op, shape, args.block_rows, args.threads, repeat)
        ours = _run(our_op, shape, args.block_rows, args.threads, repeat)
        print(_row(label, base, ours), flush=True)

    print("per shape: factor (S, V) vs dense SVD")
    print(HEADER)
    for shape in shapes:
        compare(f"{shape[0]}x{shape[1]}", "svd", "factors", shape)
    print("\nper shape: SVF end to end (factor + reconstruct to float32) vs dense SVD + formula")
    print(HEADER)
    for shape in shapes:
        compare(f"{shape[0]}x{shape[1]}", "adapt-ref", "adapt", shape)
    if not args.skip_embedding:
        print("\nall nine matrices")
        print(HEADER)
        compare("factor cache build", "all-svd", "cache-build", None)
        compare("new vector (cache hit)", "all-adapt-ref", "cache-adapt", None)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
