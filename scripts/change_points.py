"""Calibrate the default penalty of ``inference.change_points`` by simulation.

For each penalty factor k (penalty = k sigma^2 log n), on series of 12 to 40 checkpoints:
the share of white-noise series in which a change point is reported (false alarms), and the
share of series with a shift of ``--shift`` sigma half-way in which it is found there.

    python scripts/change_points.py --series 1000
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from lm_eval_fairdyn.dynamics import inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--shift", type=float, default=4.0, help="in units of the noise sigma")
    parser.add_argument("--factors", default="2,4,6,8")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for factor in (float(f) for f in args.factors.split(",")):
        false_alarms = found = 0
        for _ in range(args.series):
            n = int(rng.integers(12, 41))
            noise = rng.normal(0, 1, n)
            shifted = noise + np.where(np.arange(n) >= n // 2, args.shift, 0.0)
            for signal, is_shifted in ((noise, False), (shifted, True)):
                penalty = factor * inference.noise_level(signal) ** 2 * np.log(n)
                changes = inference.change_points(pd.Series(signal, index=np.arange(n)), penalty)
                if is_shifted:
                    found += bool((changes.to_step == n // 2).any())
                else:
                    false_alarms += not changes.empty
        print(f"k = {factor:g}: false alarms {false_alarms / args.series:.3f}, "
              f"{args.shift:g}-sigma shift found {found / args.series:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
