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
