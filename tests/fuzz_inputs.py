"""Seeded structured mutations of image files, for the fuzz tests of the readers and of the server."""

from __future__ import annotations

import numpy as np


def mutations(seed_files: list[bytes], n: int, seed: int = 0) -> list[bytes]:
    """Byte flips, truncations, insertions, header splices and repeats of the seed files."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        data = bytearray(seed_files[i % len(seed_files)])
        kind = i % 5
        if kind == 0:  # flip bytes
            for pos in rng.integers(0, len(data), rng.integers(1, 40)):
                data[pos] = int(rng.integers(0, 256))
        elif kind == 1:  # truncate
            data = data[: int(rng.integers(1, len(data)))]
        elif kind == 2:  # insert garbage
            pos = int(rng.integers(0, len(data)))
            data[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 500)), dtype=np.uint8).tobytes()
        elif kind == 3:  # corrupt the header region
            for pos in rng.integers(0, min(len(data), 400), 8):
                data[pos] = int(rng.integers(0, 256))
        else:  # overwrite a run with one value (lengths, tags)
            pos = int(rng.integers(0, len(data)))
            data[pos : pos + 16] = bytes([int(rng.integers(0, 256))]) * 16
        out.append(bytes(data))
    return out
