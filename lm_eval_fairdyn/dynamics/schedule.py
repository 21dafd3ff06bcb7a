"""Pythia's checkpoint schedule: log-spaced early steps, then evenly spaced ones."""

from __future__ import annotations

import numpy as np

PYTHIA_FINAL_STEP = 143000


def pythia_shaped_steps(total: int, log_spaced_until: int, evenly_spaced: int) -> list[int]:
    """0, 1, 2, 4, ... (powers of two up to ``log_spaced_until`` and below the first even step),
    then ``evenly_spaced`` steps evenly spaced up to ``total``."""
    even = sorted({int(round(total * k / evenly_spaced)) for k in range(1, evenly_spaced + 1)})
    log = [0] + [2**i for i in range(total.bit_length()) if 2**i <= log_spaced_until and 2**i < even[0]]
    return sorted(set(log + even))


def pythia_steps() -> list[int]:
    """Pythia's 154 checkpoints: step0, 1, 2, 4, ..., 512, then every 1000 up to 143000."""
    return pythia_shaped_steps(PYTHIA_FINAL_STEP, log_spaced_until=512, evenly_spaced=143)


def schedule_steps(schedule: str) -> list[int]:
    """``pythia`` (all 154) or ``pythia:K`` (K of them, evenly spaced in log(step + 1), ends kept)."""
    name, _, count = schedule.partition(":")
    if name != "pythia":
        raise ValueError(f"unknown schedule {schedule!r}; use 'pythia' or 'pythia:K'")
    steps = pythia_steps()
    if not count:
        return steps
    k = int(count)
    if not 2 <= k <= len(steps):
        raise ValueError(f"schedule {schedule!r}: K must be between 2 and {len(steps)}")
    targets = np.expm1(np.linspace(0, np.log1p(steps[-1]), k))
    return sorted({min(steps, key=lambda s: abs(np.log1p(s) - np.log1p(t))) for t in targets})
