"""Envelope encode / decode throughput next to a bare numpy copy of the same bytes, measured in one run.

Usage: .venv/bin/python bench/envelope.py [--repeat N]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from fedmq.shared.envelope import Envelope, Kind, decode, encode


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20, help="repetitions; the best time is kept (default 20)")
    args = ap.parse_args()
    print(f"# {platform.node()} {platform.machine()} python {platform.python_version()} numpy {np.__version__}")
    print(
        f"{'params':>10} {'bytes':>11} {'encode MB/s':>12} {'decode MB/s':>12} "
        f"{'numpy copy MB/s':>16} {'decode/copy':>12}"
    )
    rng = np.random.default_rng(0)
    for n in (10_000, 100_000, 1_000_000):
        w = {
            "coef": rng.normal(size=(10, n // 10)).astype(np.float32),
            "intercept": rng.normal(size=10).astype(np.float32),
        }
        env = Envelope(Kind.UPDATE, "bench", 1, "n1", 0, w, samples=100, metrics={"loss": 0.1})
        msg = encode(env)
        t_enc = best(lambda: encode(env), args.repeat)
        t_dec = best(lambda: decode(msg), args.repeat)
        t_copy = best(lambda: {k: np.frombuffer(v.tobytes(), v.dtype) for k, v in w.items()}, args.repeat)
        mb = len(msg) / 1e6
        print(
            f"{n:>10,} {len(msg):>11,} {mb / t_enc:>12.0f} {mb / t_dec:>12.0f} "
            f"{mb / t_copy:>16.0f} {t_copy / t_dec:>12.2f}"
        )


if __name__ == "__main__":
    main()
