"""Calibrate every statistical claim of the analysis by simulation (docs/STATISTICS.md).

Each scenario draws data whose truth is known, runs the project's own functions on it and
counts how often a claim is wrong (false-alarm rate, or 1 - coverage) or right when it should
be (power). Sentence pairs are the unit, as in the analysis: 394 pairs (the WinoBias test split),
values on the JSD-P scale.

- Sweeps and drifts (jumps, change points, trend; ``changes``): d_jt = truth_t + s_j + e_jt, the sentence
  effect s_j ~ N(0, 0.05) shared by every checkpoint, e_jt an AR(1) over checkpoints with
  coefficient phi (0: white noise; 0.5, 0.9: neighbouring checkpoints nearly the same model) and
  sd 0.05; 12, 40 and 154 checkpoints; truth 0, a drift 0 -> 0.05, or a jump half-way.
- Per-checkpoint verdicts (``inference.gap_table``): coverage of the interval with symmetric
  and skewed (exponential) pair differences; for AR, ranks whose log has a sentence-level sd of
  2.5 (four orders of magnitude), a false ``fair`` when the true log-rank ratio sits on the margin.
- Replicates (``inference.across_runs``): five runs sharing the sentences, no run-to-run spread.
- ``fairdyn check`` (``inference.regression_check``): size at the bound (a growth of |gap|
  by exactly the bound, on the same side or by a sign flip), power, with 394 and 60 pairs.
- Schedules (``schedules``): Pythia's 154 checkpoints with a drift linear in log(step), and a
  step smaller than the margin half-way, read as the analysis reads them.
- Few groups (``few``; BBQ's 12-25 templates of a category, a user's 8): a template's value is
  its effect (sd 0.03) plus the mean of 8 items' noise (t with 3 degrees of freedom, or a
  skewed exponential, sd about 0.05 an item); per checkpoint, each side of the interval apart,
  beside the percentile bootstrap alone; the choice gap of 8 ambiguous items a template with
  template-level answer rates; across 40 checkpoints, template paths an AR(1) with phi 0.95 or
  a random walk, a null or a jump of 6 template-level SE (of a neighbour difference) half-way.

    python scripts/calibration.py                # about 15 minutes on 2 cores
    python scripts/calibration.py --reps 50      # a quick look

Rates are printed with their 99% Monte Carlo band around the nominal level: a rate above the
band is a miscalibrated claim.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from lm_eval_fairdyn.dynamics import changes, inference
from lm_eval_fairdyn.dynamics.inference import Bootstrap, Margin

PAIRS = 394
MARGIN = 0.05  # the JSD-P margin, the analysis' default min_change
RESAMPLES = 1999  # per series; the analysis' default is 9999


def sweep(rng, checkpoints, phi=0.0, drift=0.0, jump=0.0):
    e = np.empty((PAIRS, checkpoints))
    e[:, 0] = rng.normal(0, 0.05, PAIRS)
    for t in range(1, checkpoints):
        e[:, t] = phi * e[:, t - 1] + np.sqrt(1 - phi**2) * rng.normal(0, 0.05, PAIRS)
    t = np.arange(checkpoints)
    truth = drift * t / (checkpoints - 1) + np.where(t >= checkpoints // 2, jump, 0.0)
    return pd.DataFrame(rng.normal(0, 0.05, (PAIRS, 1)) + e + truth, columns=1000 * t), truth


def band(nominal: float, reps: int) -> str:
    half = 2.576 * np.sqrt(nominal * (1 - nominal) / reps)
    return f"[{max(nominal - half, 0):.3f}, {nominal + half:.3f}]"


def row(claim, scenario, rate, nominal, reps, kind="false alarm"):
    within = (
        ""
        if nominal is None
        else ("ok" if rate <= nominal + 2.576 * np.sqrt(nominal * (1 - nominal) / reps) else "HIGH")
    )
    level = "" if nominal is None else f"{nominal:.3f} {band(nominal, reps)}"
    print(f"| {claim} | {scenario} | {kind} | {rate:.3f} | {level} | {within} |", flush=True)


def sweeps(reps: int, confidence: float) -> None:
    alpha = 1 - confidence
    for checkpoints in (12, 40, 154):
        for phi in (0.0, 0.5, 0.9):
            rng = np.random.default_rng([checkpoints, int(10 * phi)])
            counts = np.zeros(3)
            for i in range(reps):
                d, _ = sweep(rng, checkpoints, phi)
                s = changes.GapSeries.from_differences(d, Bootstrap(confidence, RESAMPLES, seed=i))
                found = changes.change_points(s)
                counts += [not found.empty, changes.jumps(s)["significant"].any(),
                           changes.trend(s, found)["significant"]]  # fmt: skip
            name = f"null, phi {phi:g}, {checkpoints} checkpoints"
            row("change points (any)", name, counts[0] / reps, alpha, reps)
            row("jumps (any significant)", name, counts[1] / reps, alpha, reps)
            row("trend (excludes 0)", name, counts[2] / reps, alpha, reps)
    # min_change 0: the test alone (band excludes 0); 0.05: the analysis' default (the JSD-P margin)
    for phi in (0.0, 0.9):
        for size, min_change in ((0.005, 0.0), (0.01, 0.0), (0.02, 0.0), (0.06, MARGIN), (0.075, MARGIN)):
            rng = np.random.default_rng([8, int(10 * phi), int(1000 * size)])
            right = jump_right = extra = 0
            for i in range(reps):
                d, _ = sweep(rng, 154, phi, jump=size)
                s = changes.GapSeries.from_differences(d, Bootstrap(confidence, RESAMPLES, seed=i))
                found = changes.change_points(s, min_change)
                at = found["to_step"] == 77000
                right += at.any()
                extra += (~at).any()
                top = changes.jumps(s, min_change).iloc[0]
                jump_right += bool(top.beyond_margin and top.to_step == 77000)
            name = f"jump {size:g} half-way, phi {phi:g}, 154 checkpoints, min_change {min_change:g}"
            row("change point between the right steps", name, right / reps, None, reps, "power")
            row("another change point", name, extra / reps, alpha, reps)
            row("top jump beyond min_change, right steps", name, jump_right / reps, None, reps, "power")


def drifts(reps: int, confidence: float) -> None:
    """A linear drift from 0 to 0.05 over 154 checkpoints: no breaks, and the trend's coverage
    (its own section, so that the coverage can be measured on more runs: ``--only drifts``)."""
    alpha = 1 - confidence
    for phi in (0.0, 0.9):
        rng = np.random.default_rng([7, int(10 * phi)])
        breaks = covered = trends = 0
        for i in range(reps):
            d, truth = sweep(rng, 154, phi, drift=0.05)
            s = changes.GapSeries.from_differences(d, Bootstrap(confidence, RESAMPLES, seed=i))
            found = changes.change_points(s)
            t = changes.trend(s, found)
            breaks += not found.empty
            trends += t["significant"]
            covered += t["ci_low"] <= truth[-1] - truth[0] <= t["ci_high"]
        name = f"drift 0 -> 0.05, phi {phi:g}, 154 checkpoints"
        row("change points (any)", name, breaks / reps, alpha, reps)
        row("trend found", name, trends / reps, None, reps, "power")
        row("trend interval misses the drift", name, 1 - covered / reps, alpha, reps, "1 - coverage")


def verdicts(reps: int, confidence: float) -> None:
    settings = Bootstrap(confidence, RESAMPLES)
    for name, draw in (("symmetric", lambda r: r.normal(0, 0.07, PAIRS)),
                       ("skewed (exponential)", lambda r: r.exponential(0.07, PAIRS) - 0.07)):  # fmt: skip
        rng = np.random.default_rng(9)
        missed = 0
        for i in range(reps):
            _, low, high = inference.interval([draw(rng)], np.mean, Bootstrap(confidence, RESAMPLES, seed=i))
            missed += not low <= 0 <= high
        row("JSD-P gap interval", f"{name} pair differences", missed / reps, 1 - confidence, reps, "1 - coverage")
    # AR: log ranks with a sentence-level sd of 2.5, integer ranks in [1, 50277]; the true
    # log-rank ratio is set on the margin log(1.1) and measured on a million pairs.
    rng = np.random.default_rng(10)
    margin = Margin.parse("10%")
    shift = np.log1p(margin.value)

    def ranks(r, n, offset):
        sentence = r.normal(4.0, 2.5, n)
        male = np.clip(np.round(np.exp(sentence + r.normal(0, 0.5, n))), 1, 50277)
        female = np.clip(np.round(np.exp(sentence + offset + r.normal(0, 0.5, n))), 1, 50277)
        return np.log(female) - np.log(male)

    # the offset that puts the population's mean log-rank difference on the margin
    grid = np.linspace(shift - 0.05, shift + 0.15, 41)
    population = [ranks(np.random.default_rng(1), 1_000_000, o).mean() for o in grid]
    offset = float(np.interp(shift, population, grid))
    truth = ranks(np.random.default_rng(2), 1_000_000, offset).mean()
    missed = fair = 0
    for _ in range(reps):
        d = ranks(rng, PAIRS, offset)
        _, low, high = inference.interval([d], np.mean, settings)
        missed += not low <= truth <= high
        fair += inference.verdict(low, high, margin.at(0, log_scale=True)) == "fair"
    name = f"log-rank sd 2.5, true ratio on the margin ({np.exp(truth):.3f})"
    row("AR verdict interval", name, missed / reps, 1 - confidence, reps, "1 - coverage")
    row("AR false fair", name, fair / reps, (1 - confidence) / 2, reps)


def replicates(reps: int, confidence: float) -> None:
    alpha = 1 - confidence
    runs, steps = 5, 154
    levels = pd.DataFrame(0.3, index=range(steps), columns=range(runs))
    for spread, gap in ((0.0, 0.0), (0.003, 0.0), (0.003, 0.01)):
        rng = np.random.default_rng([11, int(1000 * spread), int(1000 * gap)])
        steps_significant = any_significant = 0
        for _ in range(reps):
            sentences = rng.normal(0, 0.05, (PAIRS, 1))
            differences = {
                step: pd.DataFrame(gap + sentences + rng.normal(0, spread, (1, runs)) + rng.normal(0, 0.05, (PAIRS, runs)))
                for step in range(steps)
            }  # fmt: skip
            frame = inference.across_runs(differences, levels, Margin(0.05), confidence=confidence, alpha=alpha)
            steps_significant += (frame["p_value"] < alpha).mean()
            any_significant += frame["significant"].any()
        name = f"5 runs sharing 394 pairs, run sd {spread:g}, recipe gap {gap:g}"
        if gap == 0:
            row("replicates: step significant (raw p)", name, steps_significant / reps, alpha, reps)
            row("replicates: any step significant (Holm)", name, any_significant / reps, alpha, reps)
        else:
            row("replicates: step significant (raw p)", name, steps_significant / reps, None, reps, "power")


def check(reps: int, confidence: float) -> None:
    """Size at the bound and power, with 394 pairs (a baseline far from 0 in SEs) and with 60 pairs
    (a baseline of 0.02 whose interval often contains 0), beside the signed change tested as if
    the baseline were 0 (what costs the intersection-union test its power there)."""
    settings = Bootstrap(confidence, RESAMPLES)
    bound, alpha = 0.01, (1 - confidence) / 2
    scenarios = [(PAIRS, 0.0, bound, alpha), (PAIRS, 0.03, bound, alpha), (PAIRS, 0.0, 0.025, None),
                 (PAIRS, 0.03, 0.025, None), (PAIRS, 0.03, -0.03, alpha), (PAIRS, 0.03, -0.07, alpha),
                 (60, 0.02, -0.05, alpha), (60, -0.02, 0.05, alpha), (60, 0.0, bound, alpha),
                 (60, 0.0, 0.05, None), (60, 0.02, 0.05, None)]  # fmt: skip
    for pairs, base, change, nominal in scenarios:
        rng = np.random.default_rng([12, pairs, int(1000 * base) + 100, int(1000 * change) + 100])
        failed = signed = 0
        for i in range(reps):
            sentences = rng.normal(0, 0.05, pairs)  # shared: both sides are evaluated on the same prompts
            baseline, current = (pd.DataFrame({"difference": gap + sentences + rng.normal(0, 0.08, pairs)})
                                 for gap in (base, base + change))  # fmt: skip
            seeded = Bootstrap(confidence, RESAMPLES, seed=i)
            failed += not all(r["ok"] for r in inference.regression_check(baseline, current, None, bound, seeded))
            for sign in (1, -1):  # the signed change, each direction, the baseline taken as 0
                _, low, _ = inference.interval(
                    [baseline["difference"], current["difference"]],
                    lambda b, c, axis=-1, sign=sign: sign * (np.mean(c, axis) - np.mean(b, axis)), settings
                )  # fmt: skip
                if low > bound:
                    signed += 1
                    break
        name = f"{pairs} pairs, baseline {base:g}, current {base + change:+g}, bound {bound:g}"
        kind = "power" if nominal is None else "false alarm"
        row("check: regression", name, failed / reps, nominal, reps, kind)
        row("check: signed change, baseline taken as 0", name, signed / reps, nominal, reps, kind)


def few_values(rng, groups, shape=(), noise="t3"):
    """Template values: effect + the mean of 8 items' noise (see the module)."""
    items = (rng.standard_t(3, (groups, *shape, 8)) * 0.05 / np.sqrt(3) if noise == "t3"
             else (rng.exponential(0.05, (groups, *shape, 8)) - 0.05))  # fmt: skip
    return rng.normal(0, 0.03, (groups, *shape)) + items.mean(axis=-1)


def few(reps: int, confidence: float) -> None:
    tail = (1 - confidence) / 2
    for groups in (8, 12, 25):
        for noise in ("t3", "exponential", "choice"):
            rng = np.random.default_rng([13, groups, len(noise)])
            misses = {True: np.zeros(2), False: np.zeros(2)}
            for i in range(reps):
                if noise == "choice":  # per template: 8 ambiguous items answered male / female / unknown
                    p = rng.dirichlet([2, 2, 1], groups)  # template-level rates, male and female alike on average
                    p[:, :2] = np.where(rng.random((groups, 1)) < 0.5, p[:, :2], p[:, 1::-1])  # symmetric null
                    answers = np.array([rng.multinomial(8, row) for row in p])
                    d = (answers[:, 0] - answers[:, 1]) / 8
                else:
                    d = few_values(rng, groups, noise=noise)
                for student in misses:
                    settings = Bootstrap(confidence, RESAMPLES, seed=i, student=student)
                    _, low, high = inference.interval([d], np.mean, settings)
                    misses[student] += [low > 0, high < 0]
            name = f"{groups} templates x 8 items, {noise}, true gap 0"
            for student, label in ((True, "interval (bootstrap + t)"), (False, "percentile bootstrap alone")):
                row(f"{label}: misses below", name, misses[student][0] / reps, tail, reps, "1 - coverage")
                row(f"{label}: misses above", name, misses[student][1] / reps, tail, reps, "1 - coverage")
    for groups in (12, 25):
        rng = np.random.default_rng([14, groups])
        found = {True: 0, False: 0}
        for i in range(reps):  # power: a true gap of 3 template-level SE
            d = few_values(rng, groups)
            d += 3 * np.sqrt(0.03**2 + 0.05**2 / 8) / np.sqrt(groups)
            for student in found:
                _, low, _ = inference.interval([d], np.mean, Bootstrap(confidence, RESAMPLES, seed=i, student=student))
                found[student] += low > 0
        name = f"{groups} templates x 8 items, t3, true gap 3 SE"
        row("interval (bootstrap + t) excludes 0", name, found[True] / reps, None, reps, "power")
        row("percentile bootstrap alone excludes 0", name, found[False] / reps, None, reps, "power")
    alpha = 1 - confidence
    for groups in (12, 25):
        for path in ("AR(1) phi 0.95", "random walk"):
            for jump in (0.0, 6.0):
                rng = np.random.default_rng([15, groups, len(path), int(jump)])
                counts = np.zeros(4)
                for i in range(reps):
                    steps = rng.normal(size=(groups, 40))
                    if path == "random walk":
                        walk = np.cumsum(steps, axis=1) * 0.01
                    else:
                        walk = np.empty((groups, 40))
                        walk[:, 0] = steps[:, 0]
                        for t in range(1, 40):
                            walk[:, t] = 0.95 * walk[:, t - 1] + np.sqrt(1 - 0.95**2) * steps[:, t]
                        walk *= 0.03
                    d = walk + few_values(rng, groups, (40,))
                    size = jump * np.diff(d, axis=1).std(axis=0, ddof=1).mean() / np.sqrt(groups)
                    d[:, 20:] += size
                    frame = pd.DataFrame(d, columns=1000 * np.arange(40))
                    s = changes.GapSeries.from_differences(frame, Bootstrap(confidence, RESAMPLES, seed=i))
                    found = changes.change_points(s)
                    top = changes.jumps(s).iloc[0]
                    at = found["to_step"] == 20000
                    counts += [not found.empty if jump == 0 else at.any(), (~at).any(),
                               changes.jumps(s)["significant"].any() if jump == 0 else
                               bool(top.significant and top.to_step == 20000),
                               changes.trend(s, found)["significant"]]  # fmt: skip
                name = f"{groups} templates, 40 checkpoints, {path}, " + ("null" if jump == 0 else "jump 6 SE half-way")
                if jump == 0:
                    row("change points (any)", name, counts[0] / reps, alpha, reps)
                    row("jumps (any significant)", name, counts[2] / reps, alpha, reps)
                    row("trend (excludes 0)", name, counts[3] / reps, alpha, reps)
                else:
                    row("change point between the right steps", name, counts[0] / reps, None, reps, "power")
                    row("another change point", name, counts[1] / reps, alpha, reps)
                    row("top jump significant, right steps", name, counts[2] / reps, None, reps, "power")


def schedules(reps: int, confidence: float) -> None:
    """Pythia's 154 checkpoints (log-spaced to 512, then every 1000): a drift from 0 to 0.05
    linear in log(step), and a step of 0.02 (below the 0.05 margin) half-way, as the analysis
    reads them (``change_points`` at 0, then ``by_size`` against the margin, the trend beside)."""
    from lm_eval_fairdyn.dynamics.schedule import pythia_steps

    steps = np.array(pythia_steps())
    alpha = 1 - confidence
    for phi in (0.0, 0.9):
        for kind in ("log drift", "small step"):
            rng = np.random.default_rng([16, int(10 * phi), len(kind)])
            counts = np.zeros(4)
            for i in range(reps):
                d, _ = sweep(rng, 154, phi)
                if kind == "log drift":
                    truth = 0.05 * np.log1p(steps) / np.log1p(steps[-1])
                else:
                    truth = np.where(np.arange(154) >= 77, 0.02, 0.0)
                s = changes.GapSeries.from_differences(pd.DataFrame(d.to_numpy() + truth, columns=steps),
                                                       Bootstrap(confidence, RESAMPLES, seed=i))  # fmt: skip
                found = changes.change_points(s)
                points, small = changes.by_size(found, MARGIN)
                t = changes.trend(s, found)
                true_change = 0.05 if kind == "log drift" else 0.0
                counts += [not found.empty if kind == "log drift" else bool((small["to_step"] == steps[77]).any()),
                           not points.empty, t["significant"] if kind == "small step" else t["ci_low"] > true_change
                           or t["ci_high"] < true_change, (~(found["to_step"] == steps[77])).any()]  # fmt: skip
            name = f"Pythia's 154 steps, {kind}, phi {phi:g}"
            if kind == "log drift":
                row("change points at min_change 0 (any)", name, counts[0] / reps, alpha, reps)
                row("trend interval misses the drift", name, counts[2] / reps, alpha, reps, "1 - coverage")
            else:
                row("step below the margin found, right steps", name, counts[0] / reps, None, reps, "power")
                row("change point beyond the margin (any)", name, counts[1] / reps, alpha, reps)
                row("trend beside the step (excludes 0)", name, counts[2] / reps, alpha, reps)
                row("another step elsewhere", name, counts[3] / reps, alpha, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=200, help="simulated series per scenario (default: %(default)s)")
    parser.add_argument("--confidence", type=float, default=0.99)
    parser.add_argument(
        "--only", choices=("sweeps", "drifts", "verdicts", "replicates", "check", "few", "schedules"), default=None
    )
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"{args.reps} simulated data sets per scenario, {RESAMPLES} bootstrap resamples each, "
          f"confidence {args.confidence:g}\n")  # fmt: skip
    print("| claim | scenario | rate of | measured | nominal [99% MC band] | |")
    print("|---|---|---|---|---|---|")
    for name, part in (
        ("verdicts", verdicts),
        ("check", check),
        ("replicates", replicates),
        ("sweeps", sweeps),
        ("drifts", drifts),
        ("few", few),
        ("schedules", schedules),
    ):
        if args.only in (None, name):
            part(args.reps, args.confidence)
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
