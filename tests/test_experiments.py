"""mbv2.experiments: the Figure 6a / 6b ablations and the expansion sweep, on a tiny
configuration (400 of the 8x8 digits, 1 epoch of 4 batches, width 0.1), end to end."""

import copy
import json

import pytest
import torch

from mbv2 import ablations as ab
from mbv2 import experiments as ex
from mbv2.loop import build_model

TINY = dict(data="digits", epochs=1, width=0.1, threads=1, batch_size=100, train_images=400)
# the same on the command line
TINY_ARGS = [*(item for key, value in TINY.items()
               for item in (f"--{key.replace('_', '-')}", str(value))), "--no-progress"]


@pytest.fixture(scope="module")
def figure6b(tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "figure6b.json"
    result = ex.main(["figure6b", "--out", str(out), "--seeds", "2", *TINY_ARGS])
    return out, result


@pytest.fixture(scope="module")
def recorded(figure6b):
    return figure6b[1]


def test_the_script_writes_every_curve_with_provenance(figure6b):
    out, result = figure6b
    recorded = json.loads(out.read_text())
    assert recorded == json.loads(json.dumps(result))
    assert recorded["complete"] and recorded["experiment"] == "figure6b"
    assert [v["name"] for v in recorded["variants"]] == ["bottleneck", "expansion", "none"]
    assert len({v["params"] for v in recorded["variants"]}) == 1  # shortcuts have no weights
    assert len({v["madds"] for v in recorded["variants"]}) == 1
    # At width 0.1 the stem and the t = 1 block both have 8 channels, so that block has the
    # paper's shortcut too; between expansions it has no partner (the next block's t is 6).
    assert [(v["shortcuts"], v["expansion_links"]) for v in recorded["variants"]] == [
        (11, 0), (0, 10), (0, 0)]
    assert [(r["variant"], r["seed"]) for r in recorded["runs"]] == [
        (name, seed) for seed in (0, 1) for name in ("bottleneck", "expansion", "none")]
    for run in recorded["runs"]:
        for key in ("val_accuracy", "val_loss", "val_accuracy_ema", "val_loss_ema", "train_loss", "epoch"):
            assert len(run[key]) == 1, key
        assert 0 <= run["test_accuracy"] <= 1 and run["seconds"] > 0
    config = recorded["config"]
    assert config["seeds"] == [0, 1] and config["recipe"] == "paper" and config["threads"] == 1
    assert config["steps_per_epoch"] == 4 and config["train_images"] == 400
    prov = recorded["provenance"]
    assert prov["command"][:2] != [] and prov["threads"] == 1 and prov["torch"] == torch.__version__
    assert "commit" in prov and prov["wall_seconds"] > 0


def test_paired_seeds_start_every_variant_from_the_same_weights():
    def initial(experiment, variant, seed):
        config = ex.ExperimentConfig(experiment, **TINY).check()
        return build_model(ex._train_config(config, variant, seed, 1, 1, False), 10).state_dict()

    for experiment in ("figure6a", "figure6b"):
        states = [initial(experiment, v, 3) for v in ex.variants(experiment)]
        for state in states[1:]:
            assert list(state) == list(states[0])
            assert all(torch.equal(state[k], states[0][k]) for k in state)
    other_seed = initial("figure6b", ex.variants("figure6b")[0], 4)
    assert not torch.equal(other_seed["stem.conv.weight"], states[0]["stem.conv.weight"])
    # The expansion sweep: same shapes, same weights (stem, first block, head, classifier).
    sweep = [initial("expansion", v, 3) for v in ex.variants("expansion", widths=[0.35])]
    for key in ("stem.conv.weight", "stages.0.0.depthwise.conv.weight", "head.conv.weight",
                "classifier.linear.weight"):
        assert all(torch.equal(state[key], sweep[0][key]) for state in sweep), key


def test_variants_of_the_expansion_sweep():
    found = ex.variants("expansion", widths=[0.35, 1.0])
    assert len(found) == 2 * len(ex.EXPANSION_RATIOS) == 14
    assert found[0].name == "t=0.5 width=0.35" and found[-1].name == "t=10 width=1"
    assert ex.stages_with_ratio(0.5)[0][0] == 1  # the first block keeps t = 1 (Table 2)
    assert [row[0] for row in ex.stages_with_ratio(4)[1:]] == [4] * 6


def test_live_slice_reruns_the_first_epochs_exactly(recorded):
    # One seed of every variant, its first epoch: on the same machine, the same numbers.
    live = ex.live_slice(recorded, epochs=1, progress=False)
    assert [(r["variant"], r["seed"]) for r in live["runs"]] == [
        ("bottleneck", 0), ("expansion", 0), ("none", 0)]
    for run in live["runs"]:
        old = next(r for r in recorded["runs"] if (r["variant"], r["seed"]) == (run["variant"], 0))
        assert run["state_sha256"] == old["state_sha256"]
        assert {k: v for k, v in run.items() if k != "seconds"} == {k: v for k, v in old.items() if k != "seconds"}
    check = ex.check_slice(recorded, live, tolerance=0.0)
    assert check.passed and set(check.max_difference.values()) == {0.0}
    assert len(check.compared) == 3 and "agrees" in check.describe()


def test_the_slice_check_fails_on_a_perturbed_file(recorded):
    live = copy.deepcopy(recorded)
    assert ex.check_slice(recorded, live).passed
    perturbed = copy.deepcopy(recorded)
    perturbed["runs"][1]["val_accuracy"][0] += 0.05
    check = ex.check_slice(perturbed, live, tolerance=0.01)
    assert not check.passed and check.max_difference["val_accuracy"] == pytest.approx(0.05)
    perturbed = copy.deepcopy(recorded)
    perturbed["runs"][0]["val_loss"][0] *= 1.1
    assert not ex.check_slice(perturbed, live).passed
    assert ex.check_slice(perturbed, live, tolerance=0.2).passed
    missing = copy.deepcopy(recorded)
    del missing["runs"][0]
    assert not ex.check_slice(missing, live).passed
    other = copy.deepcopy(recorded)
    other["config"]["width"] = 0.2
    assert not ex.check_slice(other, live).passed


def test_resume_keeps_finished_runs(tmp_path, recorded):
    out = tmp_path / "r.json"
    partial = copy.deepcopy(recorded)
    for run in partial["runs"]:
        run["seconds"] = -1.0  # a marker: kept, not re-run
    del partial["runs"][-1]
    out.write_text(json.dumps(partial))
    config = ex.config_of(recorded)
    result = ex.run_experiment(config, out=out, progress=False, resume=True)
    assert [r["seconds"] for r in result["runs"]][:-1] == [-1.0] * 5
    assert result["runs"][-1]["state_sha256"] == recorded["runs"][-1]["state_sha256"]
    assert result["complete"] and json.loads(out.read_text())["complete"]
    config.width = 0.2
    with pytest.raises(ValueError, match="another configuration"):
        ex.run_experiment(config, out=out, progress=False, resume=True)


def test_seeds_run_side_by_side_merge_into_one_file(tmp_path, recorded):
    part = tmp_path / "seed1.json"  # seed 1 alone, as a second process would run it
    alone = ex.main(["figure6b", "--out", str(part), "--seeds", "2", "--only-seeds", "1",
                     *TINY_ARGS])
    assert alone["config"]["seeds"] == [1] and alone["complete"]
    assert [r["state_sha256"] for r in alone["runs"]] == [
        r["state_sha256"] for r in recorded["runs"] if r["seed"] == 1]
    out = tmp_path / "figure6b.json"  # the first process's file, still missing seed 1
    first = copy.deepcopy(recorded)
    first["runs"] = [r | {"seconds": -1.0} for r in first["runs"] if r["seed"] == 0]
    first["complete"] = False
    out.write_text(json.dumps(first))
    merged = ex.main(["figure6b", "--out", str(out), "--seeds", "2", "--resume",
                      "--merge", str(part), *TINY_ARGS])
    assert merged["complete"] and merged["config"] == recorded["config"]
    assert [(r["variant"], r["seed"]) for r in merged["runs"]] == [
        (r["variant"], r["seed"]) for r in recorded["runs"]]
    assert [r["seconds"] for r in merged["runs"]] == [-1.0] * 3 + [
        r["seconds"] for r in alone["runs"]]  # nothing re-run
    assert merged["earlier_provenance"] == [first["provenance"], alone["provenance"]]
    disagreeing = copy.deepcopy(alone)
    disagreeing["runs"][0]["state_sha256"] = "0" * 64
    other = tmp_path / "other.json"
    other.write_text(json.dumps(disagreeing))
    with pytest.raises(ValueError, match="differs from the same run"):
        ex.run_experiment(ex.config_of(recorded), out=out, progress=False, resume=True,
                          merge=[other])


def test_only_seeds_must_be_among_the_seeds(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ex.main(["figure6b", "--out", str(tmp_path / "x.json"), "--seeds", "2",
                 "--only-seeds", "2", *TINY_ARGS])
    assert "--only-seeds must be among 0 ... 1, got [2]" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, match", [
    (dict(experiment="figure7"), "experiment must be one of"),
    (dict(experiment="figure6a", seeds=[]), "seeds must be distinct"),
    (dict(experiment="figure6a", seeds=[1, 1]), "seeds must be distinct"),
    (dict(experiment="figure6a", epochs=0), "epochs must be an integer >= 1"),
    (dict(experiment="figure6a", only=["cubic"]), "only must name variants"),
])
def test_bad_configurations(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ex.ExperimentConfig(**kwargs).check()


def test_a_book_recipe_run_cannot_be_sliced(recorded):
    book = copy.deepcopy(recorded)
    book["config"]["recipe"] = "book"
    with pytest.raises(ValueError, match="one-cycle"):
        ex.live_slice(book, epochs=1)


def test_reading_a_results_file(recorded):
    values = ab.per_seed(recorded)
    assert list(values) == ["bottleneck", "expansion", "none"] and set(values["none"]) == {0, 1}
    diffs = ab.paired_differences(recorded, "bottleneck")
    assert diffs["none"][1] == pytest.approx(values["none"][1] - values["bottleneck"][1])
    curves = ab.paired_differences(recorded, "none", "val_loss")
    run = {(r["variant"], r["seed"]): r for r in recorded["runs"]}
    assert curves["expansion"][0] == pytest.approx(
        [a - b for a, b in zip(run["expansion", 0]["val_loss"], run["none", 0]["val_loss"])])
    assert ab.complete_seeds(recorded) == [0, 1]
    partial = copy.deepcopy(recorded)
    del partial["runs"][-1]  # seed 1 of "none"
    assert ab.complete_seeds(partial) == [0]
    header, rows = ab.seed_table(recorded, "bottleneck", {"none": "no shortcut"})
    assert header[3] == "no shortcut (%)" and header[-1] == "no shortcut − bottleneck (points)"
    assert [row[0] for row in rows] == ["0", "1", "mean ± std", "median", "min – max"]
    assert rows[1][3] == f"{100 * values['none'][1]:.1f}"
    with pytest.raises(ValueError, match="baseline must be one of"):
        ab.paired_differences(recorded, "classic")
    with pytest.raises(ValueError, match="key must be one of"):
        ab.per_seed(recorded, "top5")
    with pytest.raises(ValueError, match="epochs must be less than"):
        ab.late_change(recorded, epochs=1)  # one epoch recorded


def test_late_change_is_the_move_over_the_last_epochs(recorded):
    longer = copy.deepcopy(recorded)
    for run in longer["runs"]:
        run["val_accuracy_ema"] = [0.5, 0.7, 0.8, 0.85]
    change = ab.late_change(longer, epochs=2)
    assert change["none"][1] == pytest.approx(0.15)


def test_the_figure_shows_every_run(recorded):
    import matplotlib

    matplotlib.use("Agg")
    labels = {"bottleneck": "b", "expansion": "e", "none": "n"}
    fig = ab.plot_ablation(recorded, "bottleneck", labels, {"bottleneck": "C0", "expansion": "C1", "none": "C2"})
    left, right = fig.axes
    assert len(left.lines) == 6 and len(right.lines) == 4 + 1  # + the zero line
    assert left.get_xlabel() == right.get_xlabel() == "epoch" and left.get_ylabel()


def test_a_results_file_is_found_by_name(tmp_path, figure6b):
    out, _ = figure6b
    assert ab.load_results("figure6b", out)["experiment"] == "figure6b"
    with pytest.raises(ValueError, match="holds 'figure6b', not 'figure6a'"):
        ab.load_results("figure6a", out)
    with pytest.raises(FileNotFoundError, match="python -m mbv2.experiments expansion"):
        ab.load_results("expansion", tmp_path / "nothing.json")


def test_epochs_default_by_experiment():
    assert ex.ExperimentConfig("figure6b").check().epochs == ex.DEFAULT_EPOCHS["figure6b"] == 30
    assert ex.ExperimentConfig("expansion").check().epochs == 15


# The committed results files: complete where they should be, made by committed code, and
# reproduced by the code as it is now (the first epoch of one variant each; on the machine
# that wrote them the difference is 0, elsewhere rounding differs slightly).
@pytest.mark.parametrize("name", ex.EXPERIMENTS)
def test_the_committed_results_are_whole_and_traceable(name):
    recorded = ab.load_results(name)
    config = ex.config_of(recorded).check()
    default = ex.ExperimentConfig(name).check()
    assert (config.epochs, config.recipe, config.data, config.threads, config.train_images) == (
        default.epochs, "paper", "mnist", 1, 0)
    assert config.seeds == list(range(5)) and config.only is None
    assert recorded["complete"]
    names = [v["name"] for v in recorded["variants"]]
    assert names == [v.name for v in config.variants()]
    pairs = [(run["variant"], run["seed"]) for run in recorded["runs"]]
    assert sorted(pairs) == sorted((n, s) for n in names for s in config.seeds)
    assert ab.complete_seeds(recorded) == config.seeds
    for run in recorded["runs"]:
        assert len(run["val_accuracy_ema"]) == len(run["train_loss"]) == config.epochs
    for prov in [*recorded.get("earlier_provenance", []), recorded["provenance"]]:
        assert len(prov["commit"]) == 40 and prov["uncommitted_changes"] is False
        assert prov["threads"] == 1


@pytest.mark.parametrize("name, variant", [("figure6a", "relu6"), ("figure6b", "expansion"),
                                           ("expansion", "t=1 width=0.35")])
def test_the_committed_results_match_the_code(name, variant):
    recorded = ab.load_results(name)
    live = ex.live_slice(recorded, epochs=1, only=[variant], progress=False)
    check = ex.check_slice(recorded, live)
    assert check.passed, check.describe()
    assert check.compared == [(variant, 0, 1)]


def test_largest_drop_finds_the_worst_fall(recorded):
    curves = copy.deepcopy(recorded)
    for run in curves["runs"]:
        run["val_accuracy"] = [0.1, 0.9, 0.5, 0.95, 0.96, 0.7, 0.9]
    drops = ab.largest_drop(curves, after=0)
    assert drops["none"][0] == (pytest.approx(0.4), 3)  # 0.9 -> 0.5 into epoch 3
    drops = ab.largest_drop(curves, after=3)
    assert drops["none"][0] == (pytest.approx(0.26), 6)
    rising = copy.deepcopy(recorded)
    for run in rising["runs"]:
        run["val_accuracy"] = [0.1, 0.2, 0.3]
    assert ab.largest_drop(rising, after=1)["bottleneck"][1] == (0.0, 0)


def test_live_slices_in_parallel_equal_the_serial_slice(recorded):
    serial = ex.live_slice(recorded, epochs=1, progress=False)
    parallel = ex.live_slices({"figure6b": recorded}, epochs=1, processes=2, progress=False)
    assert [r["variant"] for r in parallel["figure6b"]["runs"]] == ["bottleneck", "expansion", "none"]
    assert [r["state_sha256"] for r in parallel["figure6b"]["runs"]] == [
        r["state_sha256"] for r in serial["runs"]]
    assert ex.check_slice(recorded, parallel["figure6b"], tolerance=0.0).passed
    some = ex.live_slices({"figure6b": recorded}, only={"figure6b": ["none"]}, processes=1,
                          progress=False)
    assert [r["variant"] for r in some["figure6b"]["runs"]] == ["none"]


def test_figure6a_linear_and_figure6b_bottleneck_are_the_same_runs():
    # The same network (width 0.5, linear bottlenecks, the paper's shortcut) and seeds,
    # recorded by two processes from two commits: the runs must agree bit for bit.
    fig6a, fig6b = ab.load_results("figure6a"), ab.load_results("figure6b")
    assert ab.per_seed(fig6a, "state_sha256")["linear"] == ab.per_seed(fig6b, "state_sha256")["bottleneck"]
    assert ab.per_seed(fig6a, "val_loss")["linear"] == ab.per_seed(fig6b, "val_loss")["bottleneck"]
