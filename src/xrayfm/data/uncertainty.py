"""CheXpert-style label encodings and uncertainty policies.

CheXpert and MIMIC-CXR (CheXpert labeler) write each finding as 1 (positive), 0 (negative),
-1 (uncertain) or blank (not mentioned). Irvin et al. 2019 compare policies for the uncertain
label: U-Ones (treat as positive), U-Zeros (as negative) and U-Ignore (leave out of the loss,
here: ``nan``). Blank is conventionally negative; ``blank="nan"`` keeps it unknown instead.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from xrayfm.errors import DatasetError, UnknownNameError

UncertainPolicy = Literal["ones", "zeros", "ignore"]
BlankPolicy = Literal["zero", "nan"]
POLICIES: dict[str, float] = {"ones": 1.0, "zeros": 0.0, "ignore": float("nan")}
POLICY_ALIASES = {"u-ones": "ones", "u-zeros": "zeros", "u-ignore": "ignore", "ignore": "ignore"}


def resolve_policy(name: str) -> str:
    """Normalise a policy name (``ones``, ``U-Ones``, ...) or raise a clear error."""
    key = POLICY_ALIASES.get(name.lower(), name.lower())
    if key not in POLICIES:
        raise UnknownNameError(
            f"unknown uncertainty policy {name!r}; choose one of: ones (U-Ones), zeros (U-Zeros), ignore"
        )
    return key


def apply_uncertainty_policy(raw: np.ndarray, policy: str = "ones", blank: BlankPolicy = "zero") -> np.ndarray:
    """Map raw CheXpert values {1, 0, -1, nan} to training targets.

    Args:
        raw: Array of raw values; blank cells as ``nan``.
        policy: ``ones`` | ``zeros`` | ``ignore`` for the uncertain (-1) value.
        blank: ``zero`` (unmentioned = negative) or ``nan`` (unknown).

    Returns:
        float32 array of 1, 0 and nan.

    Raises:
        UnknownNameError: Unknown policy name.
        DatasetError: A value other than 1, 0, -1 or blank is present.
    """
    key = resolve_policy(policy)
    if blank not in ("zero", "nan"):
        raise UnknownNameError(f"unknown blank policy {blank!r}; choose 'zero' or 'nan'")
    arr = np.asarray(raw, dtype=np.float32).copy()
    known = ~np.isnan(arr)
    bad = known & ~np.isin(arr, (1.0, 0.0, -1.0))
    if bad.any():
        raise DatasetError(f"CheXpert labels must be 1, 0, -1 or blank; found {sorted(set(arr[bad].tolist()))}")
    arr[arr == -1.0] = POLICIES[key]
    if blank == "zero":
        arr[~known] = 0.0
    return arr
