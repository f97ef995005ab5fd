#!/usr/bin/env python3
"""How much do model weights compress, and at what speed?

Writes weight-like data (normal-distributed fp16 and bf16 with a real
model's spread, and Q4_K blocks as llama.cpp lays them out), then measures
the compression ratio and single-core throughput of gzip (levels 1 and 6,
through modelimage's own layer writer) and zstd (when the `zstandard`
package is installed) against the plain tar layer. Prints a table.

    python benchmarks/compression.py [--mib 256]
"""

from __future__ import annotations

import argparse
import io
import platform
import time
import zlib
from datetime import date

import numpy as np

from modelimage.synth import _k_quant_blocks


def samples(mib: int) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    n = mib * 2**20 // 2
    # per-row scales like a trained layer: most weights ~N(0, 0.02)
    normal = rng.standard_normal(n, dtype=np.float32)  # drawn first, then the scales (same numbers as before)
    f32 = normal * rng.uniform(0.005, 0.05, size=(n // 4096, 1)).repeat(4096)[:n].astype(np.float32)
    fp16 = f32.astype(np.float16).tobytes()
    bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    q4 = _k_quant_blocks(rng, mib * 2**20 // 144, 256, "Q4_K").tobytes()
    return {"fp16": fp16, "bf16": bf16, "Q4_K": q4}


def measure(name: str, data: bytes, fn) -> tuple[float, float]:
    t = time.perf_counter()
    out = fn(data)
    dt = time.perf_counter() - t
    return len(out) / len(data), len(data) / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=256, help="MiB of each kind of weights")
    args = ap.parse_args()
    codecs = {
        "gzip-1": lambda d: zlib.compressobj(1, zlib.DEFLATED, 31).compress(d),
        "gzip-6": lambda d: zlib.compressobj(6, zlib.DEFLATED, 31).compress(d),
    }
    try:
        import zstandard

        codecs["zstd-3"] = lambda d: zstandard.ZstdCompressor(level=3).compress(d)
    except ImportError:
        pass
    print(f"# {platform.node()} {platform.machine()} {date.today()} python {platform.python_version()}")
    print("| weights | codec | stored/raw | MB/s (1 core) |")
    print("|---|---|---|---|")
    for kind, data in samples(args.mib).items():
        for codec, fn in codecs.items():
            ratio, speed = measure(kind, data, fn)
            print(f"| {kind} | {codec} | {ratio:.3f} | {speed:.0f} |")
    import hashlib

    data = io.BytesIO(b"\0" * (args.mib * 2**20)).getvalue()
    t = time.perf_counter()
    hashlib.sha256(data).digest()
    print(f"| (reference) | none: sha256 only | 1.000 | {len(data) / (time.perf_counter() - t) / 1e6:.0f} |")


if __name__ == "__main__":
    main()
