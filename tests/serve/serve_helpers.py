"""Upload payloads for the server tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(width: int = 80, height: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()
