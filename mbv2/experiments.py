"""The ablations of Section 6.4 (Figure 6a, 6b) and the expansion rate of Section 4, run on
real data, every seed and every curve recorded with its provenance.

Three experiments, each a set of *variants* of :class:`~mbv2.MobileNetV2` trained with the
same recipe on the same data (:mod:`mbv2.loop`, :mod:`mbv2.recipe`, :mod:`mbv2.data`):

* ``figure6a``: the linear bottleneck (the paper's block) against ReLU6 after the projection
  (``projection_activation``).
* ``figure6b``: the three shortcut placements of
  :class:`~mbv2.layers.InvertedResidual` (``"bottleneck"``, the paper's; ``"expansion"``,
  the classic residual's; ``"none"``).
* ``expansion``: the expansion factor t of every block that Table 2 gives t = 6 (the
  first block keeps t = 1, as in Table 2), for t in :data:`EXPANSION_RATIOS` (t = 0.5 is
  the classic bottleneck of Section 3.4, whose inner layers are narrower than its ends),
  at two widths.

**Pairing.** For every seed, all variants start from the same weights wherever a module has
the same name and shape (:meth:`~mbv2.MobileNetV2.reset_parameters` with a seed: for
Figure 6a and 6b that is every weight, for the expansion sweep the stem, the t = 1 block, the
1x1 head and the classifier), see the same batches in the same order and draw the same dropout
masks; so per-seed differences between variants are paired. Nothing is chosen on the test
split: every epoch records the *validation* accuracy and loss (of the trained weights and of
their moving average, the paper recipe's), and the test accuracy is measured once, at the end.

**Determinism.** Each run seeds torch, uses ``torch.set_num_threads(threads)`` and
``torch.use_deterministic_algorithms(True)``, so the same command on the same machine
writes the same numbers. :func:`live_slice` re-runs the first epochs of one seed of every
variant and :func:`check_slice` compares them with a recorded file, for the book's page and
for a test.

Command line::

    python -m mbv2.experiments figure6b --out results/figure6b.json --seeds 5 --threads 1

``--resume`` keeps the runs already in ``--out``. To use more cores, run seeds side by side
in separate processes, each into its own file, then merge them (the merge re-runs nothing)::

    python -m mbv2.experiments expansion --out a.json --only-seeds 0 1 2
    python -m mbv2.experiments expansion --out b.json --only-seeds 3 4
    python -m mbv2.experiments expansion --out results/expansion.json --merge a.json b.json
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from ._checks import non_negative_int, one_of, positive_int, real_at_least
from .data import DATA_SETS, load_dataset
from .model import PAPER_TABLE_2
from .provenance import provenance, write_json

EXPERIMENTS = ("figure6a", "figure6b", "expansion")
#: The expansion factors of the ``expansion`` experiment (Section 4 tries 5 to 10 and
#: uses 6; 0.5 is the classic residual bottleneck of Section 3.4).
EXPANSION_RATIOS = (0.5, 1, 2, 4, 6, 8, 10)
#: Epochs by experiment (MNIST at 32x32, the paper's recipe, batch 96, 1 thread). In trial
#: runs the moving average's validation accuracy passed 0.93 after 5 epochs and changed by
#: less than a point from about epoch 10 on (width 0.35), while the raw weights' accuracy
#: still jumps by a few points from epoch to epoch (the learning rate decays only by 0.98
#: per epoch); 30 epochs leave a margin for the curves to flatten. One epoch took about
#: 12 s at width 0.5 (t = 6), 9 s at width 0.35 and 23 s at width 1.0, and 3 to 36 s over
#: the expansion sweep's 14 models, whose 5 seeds would take about 7.5 h at 30 epochs on one
#: thread; the sweep gets 15 epochs (about 3.7 h), Figure 6a about 1 h and 6b 1.5 h.
DEFAULT_EPOCHS = {"figure6a": 30, "figure6b": 30, "expansion": 15}
#: Figure 6a / 6b's width: half of the paper's, for time.
DEFAULT_WIDTH = 0.5
#: The expansion sweep's two widths: the smallest of the paper's multipliers and the base.
DEFAULT_WIDTHS = (0.35, 1.0)
#: :func:`check_slice`'s default: accuracies may differ by 0.01 (5 of 500 validation
#: images), losses by 1% of the recorded value. On the machine and thread count that
#: wrote the file the difference is exactly 0.
DEFAULT_TOLERANCE = 0.01
#: Where the book's recorded results live (``results/<experiment>.json`` of the repository).
RESULTS = Path(__file__).resolve().parents[1] / "results"


class Variant(NamedTuple):
    """One variant of an experiment: its name and the :class:`~mbv2.loop.TrainConfig`
    fields it sets (``width`` included for the expansion sweep)."""

    name: str
    options: dict


def stages_with_ratio(t: float) -> list[list]:
    """Table 2's rows [t, c, n, s] with every t = 6 replaced by ``t`` (the first row keeps 1)."""
    t = real_at_least("t", t, 0.0, strict=True)
    t = int(t) if t == int(t) else t
    return [[row.t if row.t == 1 else t, row.c, row.n, row.s] for row in PAPER_TABLE_2]


def variants(experiment: str, *, widths=DEFAULT_WIDTHS, ratios=EXPANSION_RATIOS) -> list[Variant]:
    """The variants of ``experiment``, in the order they are trained for each seed."""
    one_of("experiment", experiment, EXPERIMENTS)
    if experiment == "figure6a":
        return [Variant("linear", {"projection_activation": None}),
                Variant("relu6", {"projection_activation": "relu6"})]
    if experiment == "figure6b":
        return [Variant(name, {"shortcut": name}) for name in ("bottleneck", "expansion", "none")]
    return [Variant(f"t={t:g} width={w:g}", {"stages": stages_with_ratio(t), "width": float(w)})
            for w in widths for t in ratios]


@dataclass
class ExperimentConfig:
    """What :func:`run_experiment` runs; ``seeds`` is the list of seeds (0 ... n-1 by default).
    ``width`` is the width of Figure 6a / 6b's models, ``widths`` those of the expansion
    sweep; ``batch_size`` and ``lr`` None mean the recipe's."""

    experiment: str
    seeds: list = field(default_factory=lambda: list(range(5)))
    epochs: int | None = None  # None: DEFAULT_EPOCHS[experiment]
    width: float = DEFAULT_WIDTH
    widths: list = field(default_factory=lambda: list(DEFAULT_WIDTHS))
    ratios: list = field(default_factory=lambda: list(EXPANSION_RATIOS))
    data: str = "mnist"
    recipe: str = "paper"
    batch_size: int | None = None
    lr: float | None = None
    image_size: int = 32
    split_seed: int = 0
    threads: int = 1
    only: list | None = None  # variant names to run (None: all)
    train_images: int = 0     # train on the first N training images (0: all; for tests)

    def check(self) -> "ExperimentConfig":
        from .recipe import RECIPES

        one_of("experiment", self.experiment, EXPERIMENTS)
        if self.epochs is None:
            self.epochs = DEFAULT_EPOCHS[self.experiment]
        one_of("data", self.data, DATA_SETS)
        one_of("recipe", self.recipe, tuple(RECIPES))
        self.seeds = [non_negative_int("seed", s) for s in self.seeds]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds!r}")
        positive_int("epochs", self.epochs)
        positive_int("threads", self.threads)
        non_negative_int("train_images", self.train_images)
        real_at_least("width", self.width, 0.0, strict=True)
        self.widths = [real_at_least("widths", w, 0.0, strict=True) for w in self.widths]
        self.ratios = [real_at_least("ratios", t, 0.0, strict=True) for t in self.ratios]
        names = [v.name for v in variants(self.experiment, widths=self.widths, ratios=self.ratios)]
        if self.only is not None:
            unknown = [name for name in self.only if name not in names]
            if unknown or not self.only:
                raise ValueError(f"only must name variants of {self.experiment} ({names}), "
                                 f"got {self.only!r}")
        return self

    def variants(self) -> list[Variant]:
        found = variants(self.experiment, widths=self.widths, ratios=self.ratios)
        return [v for v in found if self.only is None or v.name in self.only]


def _train_config(config: ExperimentConfig, variant: Variant, seed: int, epochs: int,
                  steps_per_epoch: int, progress: bool):
    from .loop import TrainConfig

    options = {"width": config.width} | variant.options
    return TrainConfig(data=config.data, steps=epochs * steps_per_epoch, recipe=config.recipe,
                       lr=config.lr, batch_size=config.batch_size, image_size=config.image_size,
                       seed=seed, split_seed=config.split_seed, threads=config.threads,
                       train_images=config.train_images, progress=progress, paired_init=True,
                       **options).check()


def _run_record(variant: Variant, seed: int, summary: dict, steps_per_epoch: int) -> dict:
    evals = summary["evals"]
    losses = summary["step_loss"]
    record = {
        "variant": variant.name, "seed": seed,
        "epoch": [row["step"] / steps_per_epoch for row in evals],
        "train_loss": [sum(losses[i:i + steps_per_epoch]) / steps_per_epoch
                       for i in range(0, len(losses), steps_per_epoch)],
    }
    for key in ("val_accuracy", "val_loss", "val_accuracy_ema", "val_loss_ema"):
        if key in evals[0]:
            record[key] = [row[key] for row in evals]
    record["test_accuracy"] = summary["test_accuracy"]
    if "test_accuracy_ema" in summary:
        record["test_accuracy_ema"] = summary["test_accuracy_ema"]
    record["seconds"] = summary["seconds"]
    record["state_sha256"] = summary["state_sha256_per_rank"][0]
    return record


def _variant_record(config: ExperimentConfig, variant: Variant, num_classes: int) -> dict:
    from .cost import count_madds, count_params
    from .loop import build_model

    model = build_model(_train_config(config, variant, 0, 1, 1, False), num_classes)
    return {"name": variant.name, "options": variant.options,
            "width": variant.options.get("width", config.width),
            "params": count_params(model), "madds": count_madds(model, config.image_size),
            "expansion_links": model.expansion_links,
            "shortcuts": sum(block.use_shortcut for block in model.blocks())}


def run_experiment(config: ExperimentConfig, *, out: str | Path | None = None,
                   epochs: int | None = None, progress: bool = True,
                   resume: bool = False, merge: list | tuple = ()) -> dict:
    """Train every variant of ``config`` for every seed; return (and write to ``out``,
    after every run) the results: ``config``, ``variants`` (parameters, multiply-adds at
    ``image_size``), ``runs`` (one per seed and variant: per-epoch ``val_accuracy``,
    ``val_loss``, their ``_ema`` versions with the paper recipe, ``train_loss``; the final
    ``test_accuracy``; seconds), ``provenance`` with ``wall_seconds``, and ``complete``.

    ``epochs`` (default ``config.epochs``) lets :func:`live_slice` stop early. With
    ``resume``, runs already in ``out`` are kept, not redone; ``merge`` names more results
    files whose runs are kept too (parts of one experiment run side by side, each with its
    own seeds or variants). A kept file must have the same configuration apart from its
    seeds and variants, and its sessions' provenance goes to ``earlier_provenance``.
    """
    config = copy.deepcopy(config).check()
    epochs = config.epochs if epochs is None else positive_int("epochs", epochs)
    split = load_dataset(config.data, image_size=config.image_size, seed=config.split_seed)
    num_classes = int(split.y_train.max()) + 1
    batch = _train_config(config, config.variants()[0], 0, 1, 1, False).batch_size
    steps_per_epoch = len(split.y_train[:config.train_images or None]) // batch
    sources = [*([out] if resume and out is not None and Path(out).exists() else []), *merge]
    done, earlier = _kept_runs(sources, config, _config_record(config, epochs, steps_per_epoch))

    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    try:
        from .loop import run

        result = {
            "experiment": config.experiment,
            "config": _config_record(config, epochs, steps_per_epoch),
            "variants": [_variant_record(config, v, num_classes) for v in config.variants()],
            "runs": [],
            "provenance": provenance() | {"wall_seconds": None},
            "complete": False,
        }
        if earlier:
            result["earlier_provenance"] = earlier
        for seed in config.seeds:
            for variant in config.variants():
                if (variant.name, seed) in done:
                    result["runs"].append(done[(variant.name, seed)])
                    continue
                if progress:
                    print(f"{config.experiment}: {variant.name}, seed {seed}", flush=True)
                summary = run(_train_config(config, variant, seed, epochs, steps_per_epoch,
                                            progress))
                result["runs"].append(_run_record(variant, seed, summary, steps_per_epoch))
                result["provenance"]["wall_seconds"] = time.perf_counter() - start
                if out is not None:
                    write_json(out, result)
        result["complete"] = True
        result["provenance"]["wall_seconds"] = time.perf_counter() - start
        if out is not None:
            write_json(out, result)
        return result
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def _kept_runs(sources: list, config: ExperimentConfig, record: dict) -> tuple[dict, list]:
    """The runs of ``config`` recorded in the results files ``sources``, by (variant, seed),
    and the provenance of the sessions that made those files, oldest first."""
    import json

    def comparable(rec: dict) -> dict:
        return {k: v for k, v in rec.items() if k not in ("seeds", "only")}

    planned = {(v.name, seed) for v in config.variants() for seed in config.seeds}
    done: dict = {}
    earlier: list = []
    for source in sources:
        previous = json.loads(Path(source).read_text())
        if comparable(previous["config"]) != comparable(record):
            raise ValueError(f"cannot keep the runs of {source}: it was written with another "
                             "configuration (only the seeds and the variants may differ)")
        for run in previous["runs"]:
            key = (run["variant"], run["seed"])
            if key in done and done[key]["state_sha256"] != run["state_sha256"]:
                raise ValueError(f"cannot merge {source}: its run {key} differs from the same "
                                 "run in an earlier file (not reproducible here?)")
            if key in planned:
                done.setdefault(key, run)
        for session in [*previous.get("earlier_provenance", []), previous["provenance"]]:
            if session not in earlier:
                earlier.append(session)
    return done, earlier


def _config_record(config: ExperimentConfig, epochs: int, steps_per_epoch: int) -> dict:
    record = asdict(config) | {"epochs": epochs, "steps_per_epoch": steps_per_epoch}
    if config.experiment != "expansion":
        record.pop("widths"), record.pop("ratios")
    return record


def config_of(recorded: dict) -> ExperimentConfig:
    """The :class:`ExperimentConfig` a results file was written with."""
    fields = {k: v for k, v in recorded["config"].items() if k != "steps_per_epoch"}
    return ExperimentConfig(**fields)


def live_slice(recorded: dict, *, epochs: int = 2, seed: int | None = None,
               only: list | None = None, progress: bool = True) -> dict:
    """Re-run the first ``epochs`` epochs of one seed (the first recorded one by default)
    of every variant in ``recorded`` (or of the variants named in ``only``), with its
    configuration; a results dict as :func:`run_experiment` returns.

    Only a recipe whose schedule does not depend on the run's length can be cut short this
    way: the paper's (x0.98 per epoch) can, the book's one-cycle schedule cannot.
    """
    config = config_of(recorded)
    if config.recipe != "paper":
        raise ValueError(f"a slice of a {config.recipe!r}-recipe run is not its start: "
                         f"its one-cycle schedule spans the whole run")
    epochs = positive_int("epochs", epochs)
    if epochs > config.epochs:
        raise ValueError(f"epochs must be at most the recorded {config.epochs}, got {epochs}")
    config.seeds = [config.seeds[0] if seed is None else seed]
    if only is not None:
        config.only = list(only)
    return run_experiment(config, epochs=epochs, progress=progress)


def _slice_one(task: tuple) -> tuple[str, dict]:
    name, recorded, epochs, variant = task
    return name, live_slice(recorded, epochs=epochs, only=[variant], progress=False)


def live_slices(recorded: dict[str, dict], *, epochs: int = 1, only: dict | None = None,
                processes: int = 2, progress: bool = True) -> dict[str, dict]:
    """:func:`live_slice` for several results files at once, ``{name: recorded}`` in,
    ``{name: live}`` out: every variant (or those in ``only[name]``) is one task, and
    ``processes`` worker processes (each training on one thread, as the recorded runs did)
    share the tasks; a progress bar counts the finished ones."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    processes = positive_int("processes", processes)
    only = only or {}
    tasks = [(name, rec, epochs, v.name) for name, rec in recorded.items()
             for v in config_of(rec).variants()
             if only.get(name) is None or v.name in only[name]]
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_slice_one, task) for task in tasks]
        for _ in tqdm(as_completed(futures), total=len(futures), unit="run",
                      disable=not progress):
            pass
    parts: dict = {}  # {name: [live, ...]} in task order
    for future in futures:
        name, live = future.result()
        parts.setdefault(name, []).append(live)
    return {name: lives[0] | {"runs": [run for live in lives for run in live["runs"]],
                              "config": lives[0]["config"] | {"only": [
                                  live["runs"][0]["variant"] for live in lives]}}
            for name, lives in parts.items()}


class SliceCheck(NamedTuple):
    """What :func:`check_slice` found: ``passed``, the largest difference of each metric
    (accuracies absolute, losses relative to the recorded value), and the compared
    (variant, seed, epochs) triples."""

    passed: bool
    max_difference: dict
    compared: list
    tolerance: float

    def describe(self) -> str:
        worst = ", ".join(f"{k} {v:.2g}" for k, v in self.max_difference.items())
        return (f"{'agrees' if self.passed else 'DIFFERS'} within {self.tolerance:g} over "
                f"{len(self.compared)} runs (largest differences: {worst})")


def check_slice(recorded: dict, live: dict, tolerance: float = DEFAULT_TOLERANCE) -> SliceCheck:
    """Compare a live slice (:func:`live_slice`) with the recorded runs it re-ran.

    For each live run, the recorded run of the same variant and seed, over the live run's
    epochs: every validation accuracy (and its moving-average version) may differ by at
    most ``tolerance`` (absolute), every validation and training loss by at most
    ``tolerance`` times the recorded value. A live run with no recorded counterpart, or a
    configuration that differs in anything but the seeds and epochs, fails the check.
    """
    tolerance = real_at_least("tolerance", tolerance, 0.0)
    ignore = ("seeds", "epochs", "only")
    same_config = ({k: v for k, v in recorded["config"].items() if k not in ignore}
                   == {k: v for k, v in live["config"].items() if k not in ignore})
    runs = {(run["variant"], run["seed"]): run for run in recorded["runs"]}
    worst: dict = {}
    passed, compared = same_config and bool(live["runs"]), []
    for run in live["runs"]:
        old = runs.get((run["variant"], run["seed"]))
        if old is None:
            passed = False
            continue
        n = len(run["val_accuracy"])
        compared.append((run["variant"], run["seed"], n))
        for key, value in run.items():
            if not (key.startswith("val_") or key == "train_loss"):
                continue
            if key not in old or len(old[key]) < n:
                passed = False
                continue
            relative = "loss" in key
            for a, b in zip(value, old[key][:n]):
                diff = abs(a - b) / (abs(b) if relative and b else 1.0)
                if not math.isfinite(diff):
                    diff = math.inf
                worst[key] = max(worst.get(key, 0.0), diff)
                passed &= diff <= tolerance
    return SliceCheck(bool(passed), worst, compared, tolerance)


def main(argv: list[str] | None = None) -> dict:
    """``python -m mbv2.experiments {figure6a,figure6b,expansion} --out FILE ...``"""
    import argparse

    from .recipe import RECIPES

    parser = argparse.ArgumentParser(
        prog="python -m mbv2.experiments",
        description="Train the variants of Figure 6a / 6b or the expansion sweep for several "
                    "paired seeds and record every curve with its provenance.")
    add = parser.add_argument
    add("experiment", choices=EXPERIMENTS)
    add("--out", required=True, help="the results file (JSON), written after every run")
    add("--seeds", type=int, default=5, help="seeds 0 ... N-1 (default 5)")
    add("--epochs", type=int, default=None,
        help=f"epochs per run (default: {', '.join(f'{k} {v}' for k, v in DEFAULT_EPOCHS.items())})")
    add("--width", type=float, default=DEFAULT_WIDTH, help="width of figure6a/6b's models")
    add("--widths", type=float, nargs="+", default=list(DEFAULT_WIDTHS),
        help="the expansion sweep's widths")
    add("--ratios", type=float, nargs="+", default=list(EXPANSION_RATIOS),
        help="the expansion sweep's t")
    add("--only", nargs="+", default=None, metavar="VARIANT", help="run only these variants")
    add("--threads", type=int, default=1)
    add("--data", choices=DATA_SETS, default="mnist")
    add("--recipe", choices=tuple(RECIPES), default="paper")
    add("--batch-size", type=int, default=None)
    add("--lr", type=float, default=None)
    add("--split-seed", type=int, default=0)
    add("--train-images", type=int, default=0, metavar="N",
        help="train on the first N training images only (default: all; for quick tests)")
    add("--only-seeds", type=int, nargs="+", default=None, metavar="SEED",
        help="run only these of the seeds 0 ... N-1")
    add("--resume", action="store_true", help="keep the runs already in --out")
    add("--merge", nargs="+", default=[], metavar="FILE",
        help="keep the runs in these results files too (parts of the same experiment, "
             "e.g. other seeds run side by side)")
    add("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))
    if args.only_seeds is not None and not set(args.only_seeds) <= set(seeds):
        parser.error(f"--only-seeds must be among 0 ... {args.seeds - 1}, "
                     f"got {args.only_seeds}")
    config = ExperimentConfig(
        experiment=args.experiment, seeds=args.only_seeds or seeds, epochs=args.epochs,
        width=args.width, widths=args.widths, ratios=args.ratios, data=args.data,
        recipe=args.recipe, batch_size=args.batch_size, lr=args.lr,
        split_seed=args.split_seed, threads=args.threads, only=args.only,
        train_images=args.train_images)
    try:
        result = run_experiment(config, out=args.out, progress=args.progress,
                                resume=args.resume, merge=args.merge)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"python -m mbv2.experiments: error: {error}\n")
    print(f"{len(result['runs'])} runs in {result['provenance']['wall_seconds']:.0f} s -> {args.out}")
    return result


if __name__ == "__main__":
    main()
