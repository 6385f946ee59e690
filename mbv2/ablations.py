"""Reading the recorded results of :mod:`mbv2.experiments`: values per seed, paired
differences, tables, how the curves end, and the figures of the ablations chapter.

A results file (``results/<experiment>.json``, :func:`load_results`) holds, for every
variant and seed, the curves of one training run (validation accuracy and loss after every
epoch, of the weights as trained and of their moving average) and its final test accuracy.
The functions here turn it into what a reader needs to judge a comparison: the value of
every seed, the paired difference of every seed from a baseline variant
(:func:`paired_differences`: same initial weights, same batches), a table with the spread
over seeds (:func:`seed_table`), whether the curves have flattened (:func:`late_change`)
and how steady training was (:func:`largest_drop`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ._checks import non_negative_int, one_of, positive_int
from .experiments import EXPERIMENTS, RESULTS


def per_seed(recorded: dict, key: str = "test_accuracy_ema") -> dict[str, dict[int, object]]:
    """``{variant: {seed: run[key]}}`` over the recorded runs, variants in the file's order
    (``key`` a final value such as ``"test_accuracy_ema"`` or a curve such as
    ``"val_accuracy_ema"``)."""
    found: dict = {v["name"]: {} for v in recorded["variants"]}
    for run in recorded["runs"]:
        if key not in run:
            raise ValueError(f"key must be one of the recorded fields "
                             f"({sorted(k for k in run if k not in ('variant', 'seed'))}), "
                             f"got {key!r}")
        found[run["variant"]][run["seed"]] = run[key]
    return found


def paired_differences(recorded: dict, baseline: str, key: str = "test_accuracy_ema"
                       ) -> dict[str, dict[int, float]]:
    """``{variant: {seed: variant's value - baseline's value}}`` for every other variant,
    over the seeds both have: the paired comparison (same initial weights, same batches).
    For a curve (``"val_accuracy_ema"``, ...) the difference is taken epoch by epoch."""
    values = per_seed(recorded, key)
    one_of("baseline", baseline, tuple(values))

    def minus(a, b):
        return [x - y for x, y in zip(a, b)] if isinstance(a, list) else a - b

    return {name: {seed: minus(value, values[baseline][seed]) for seed, value in runs.items()
                   if seed in values[baseline]}
            for name, runs in values.items() if name != baseline}


def load_results(experiment: str, path: str | Path | None = None) -> dict:
    """The results file of ``experiment`` (default ``results/<experiment>.json``)."""
    import json

    one_of("experiment", experiment, EXPERIMENTS)
    path = Path(path) if path is not None else RESULTS / f"{experiment}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no recorded results at {path}: run python -m mbv2.experiments "
                                f"{experiment} --out {path}")
    recorded = json.loads(path.read_text())
    if recorded.get("experiment") != experiment:
        raise ValueError(f"{path} holds {recorded.get('experiment')!r}, not {experiment!r}")
    return recorded


def seed_table(recorded: dict, baseline: str, labels: dict[str, str] | None = None,
               key: str = "test_accuracy_ema") -> tuple[list[str], list[tuple]]:
    """A table (header, rows) of ``key`` in percent for every seed that all variants have,
    one column per variant, then one column per other variant of its paired difference from
    ``baseline`` in percentage points; the last three rows are the mean ± standard
    deviation (over seeds, n - 1), the median and the range."""
    labels = labels or {}
    seeds = complete_seeds(recorded)
    values = per_seed(recorded, key)
    differences = paired_differences(recorded, baseline, key)
    label = {name: labels.get(name, name) for name in values}
    columns = [[100 * values[name][s] for s in seeds] for name in values]
    columns += [[100 * differences[name][s] for s in seeds] for name in differences]
    header = (["seed"] + [f"{label[name]} (%)" for name in values]
              + [f"{label[name]} − {label[baseline]} (points)" for name in differences])
    rows = [(str(seed), *(f"{column[i]:.1f}" for column in columns)) for i, seed in enumerate(seeds)]
    if len(seeds) > 1:
        rows.append(("mean ± std", *(f"{statistics.mean(c):.1f} ± {statistics.stdev(c):.1f}"
                                     for c in columns)))
        rows.append(("median", *(f"{statistics.median(c):.1f}" for c in columns)))
        rows.append(("min – max", *(f"{min(c):.1f} – {max(c):.1f}" for c in columns)))
    return header, rows


def late_change(recorded: dict, key: str = "val_accuracy_ema", epochs: int = 10
                ) -> dict[str, dict[int, float]]:
    """``{variant: {seed: curve[-1] - curve[-1 - epochs]}}``: how much a recorded curve
    still moved over its last ``epochs`` epochs (near 0 once it has flattened)."""
    epochs = positive_int("epochs", epochs)
    found = {}
    for name, runs in per_seed(recorded, key).items():
        if any(len(curve) <= epochs for curve in runs.values()):
            raise ValueError(f"epochs must be less than the recorded {min(map(len, runs.values()))}, "
                             f"got {epochs}")
        found[name] = {seed: curve[-1] - curve[-1 - epochs] for seed, curve in runs.items()}
    return found


def largest_drop(recorded: dict, key: str = "val_accuracy", after: int = 5
                 ) -> dict[str, dict[int, tuple[float, int]]]:
    """``{variant: {seed: (drop, epoch)}}``: the largest fall of a recorded curve from one
    epoch to the next (0 if it never falls), counting only falls into epochs after
    ``after`` (the first epochs move fast by design), and the epoch it fell into."""
    after = non_negative_int("after", after)
    found = {}
    for name, runs in per_seed(recorded, key).items():
        found[name] = {}
        for seed, curve in runs.items():
            falls = [(curve[i - 1] - curve[i], i + 1) for i in range(max(1, after), len(curve))]
            found[name][seed] = max([(0.0, 0), *falls])
    return found


def plot_ablation(recorded: dict, baseline: str, labels: dict[str, str],
                  colours: dict[str, str], key: str = "val_accuracy_ema",
                  ylim: tuple[float, float] = (0.8, 1.0)):
    """A figure of two panels against the epoch: left, ``key`` of every recorded run (one
    thin line per seed, one colour per variant; ``"val_accuracy_ema"`` for the weight
    average, ``"val_accuracy"`` for the weights as trained); right, each other variant's
    paired difference from ``baseline`` in percentage points, one line per seed."""
    import matplotlib.pyplot as plt

    from .plotting import MAX_WIDTH

    curves = per_seed(recorded, key)
    epochs = {run["variant"]: run["epoch"] for run in recorded["runs"]}
    fig, (ax, ax_diff) = plt.subplots(1, 2, figsize=(MAX_WIDTH, 3.4), constrained_layout=True)
    for name, runs in curves.items():
        for i, curve in enumerate(runs.values()):
            ax.plot(epochs[name], curve, color=colours[name], lw=1, alpha=0.8,
                    label=labels[name] if i == 0 else None)
    for name, runs in paired_differences(recorded, baseline, key).items():
        for i, difference in enumerate(runs.values()):
            ax_diff.plot(epochs[name], [100 * d for d in difference], color=colours[name],
                         lw=1, alpha=0.8, label=labels[name] if i == 0 else None)
    ax_diff.axhline(0, color=colours[baseline], lw=1.5, ls="--")
    weights = "weight average" if key.endswith("_ema") else "weights as trained"
    ax.set(xlabel="epoch", ylabel="validation accuracy", ylim=ylim,
           title=f"{weights}, every seed")
    ax_diff.set(xlabel="epoch", ylabel=f"minus {labels[baseline]} (points)",
                title="paired difference, every seed")
    for axis in (ax, ax_diff):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return fig


def complete_seeds(recorded: dict) -> list[int]:
    """The seeds for which every variant of ``recorded`` has a run."""
    values = per_seed(recorded, "seed")
    common = set.intersection(*(set(runs) for runs in values.values()))
    return sorted(common)
