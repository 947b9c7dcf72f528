"""Tolerances of reduced-precision compute dtypes, for comparing a mixed-precision output with float32.

Example:
    >>> from tfmoe.testing import mixed_precision_tolerance
    >>> mixed_precision_tolerance("mixed_bfloat16")  # 8 roundings of 2^-8
    0.03125
"""

from __future__ import annotations

# Unit roundoff of the reduced compute dtypes: float16 keeps 11 significant bits (relative error <= 2^-11 ~ 4.9e-4 per
# rounding), bfloat16 8 bits (2^-8 ~ 3.9e-3 per rounding).
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


def mixed_precision_tolerance(policy: str, roundings: int = 8) -> float:
    """Relative tolerance of an output computed under ``policy`` (e.g. ``"mixed_bfloat16"``) vs float32.

    Every rounding to the compute dtype on the output's path (the cast inputs and weights, each matmul,
    normalisation or activation output) adds at most one unit roundoff ``u`` of relative error, and float32
    accumulation inside matmuls adds none worth counting: an output ``n`` such steps deep stays within
    ``n u`` of its scale (8 by default: 3.9e-3 for float16, 3.1e-2 for bfloat16).
    """
    compute = policy.split("_", 1)[-1]
    if compute not in UNIT_ROUNDOFF:
        raise ValueError(f"mixed_precision_tolerance: `policy` must be a mixed policy of {sorted(UNIT_ROUNDOFF)}, "
                         f"got {policy!r}")
    return roundings * UNIT_ROUNDOFF[compute]
