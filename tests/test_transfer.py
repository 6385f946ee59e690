"""mbv2.transfer: ImageNet-style input for the digits, pooled features, per-class draws, the
linear probe and the from-scratch baseline."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_digits

from mbv2 import MobileNetV2, StageSpec
from mbv2.transfer import (
    Stopwatch,
    cheapest_within,
    fit_probe,
    imagenet_input,
    pooled_features,
    probe_accuracy,
    sample_per_class,
    train_from_scratch,
)
from mbv2.train import fit

# The ImageNet statistics, typed here from torchvision's documentation as an independent check.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A small network for fast tests: two stages, so 8x8 inputs are enough.
TINY_STAGES = (StageSpec(t=1, c=16, n=1, s=1), StageSpec(t=6, c=24, n=2, s=2))


@pytest.fixture(scope="module")
def digits():
    return sklearn_digits()


# ---------------------------------------------------------------- imagenet_input

def test_imagenet_input_without_resizing_is_the_imagenet_normalisation(digits):
    images = digits.images[:5]
    x = imagenet_input(images, 8)
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32
    for c in range(3):
        expected = (images / 16.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        np.testing.assert_allclose(x[:, c].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_imagenet_input_upsamples_to_three_identical_gray_channels(digits):
    x = imagenet_input(torch.from_numpy(digits.images[:4]), 64)
    assert x.shape == (4, 3, 64, 64)
    gray = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-5) and torch.allclose(gray[:, 0], gray[:, 2], atol=1e-5)
    # Bilinear interpolation stays within the range of the original pixels.
    assert gray.min() >= -1e-5 and gray.max() <= 1 + 1e-5
    # A constant image stays constant, and the scale is max_value.
    flat = imagenet_input(np.full((1, 8, 8), 2.0), 40, max_value=4.0)
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(flat, expected.view(1, 3, 1, 1).expand(1, 3, 40, 40), atol=1e-5)


@pytest.mark.parametrize("images, kwargs, error, match", [
    (np.zeros((8, 8)), {}, ValueError, r"images must be a non-empty \(N, H, W\)"),
    (np.zeros((0, 8, 8)), {}, ValueError, r"images must be a non-empty \(N, H, W\)"),
    (np.full((1, 8, 8), 17.0), {}, ValueError, r"values in \[0, max_value\] = \[0, 16\]"),
    (np.full((1, 8, 8), -1.0), {}, ValueError, r"values in \[0, max_value\]"),
    (np.full((1, 8, 8), np.nan), {}, ValueError, r"values in \[0, max_value\]"),
    (np.zeros((1, 8, 8)), {"size": 0}, ValueError, "size must be an integer >= 1"),
    (np.zeros((1, 8, 8)), {"max_value": 0}, ValueError, "max_value must be a finite number > 0"),
    ([[[0.0]]], {}, TypeError, "images must be a NumPy array or a torch.Tensor"),
])
def test_imagenet_input_rejects_bad_arguments(images, kwargs, error, match):
    arguments = {"size": 32, **kwargs}
    with pytest.raises(error, match=match):
        imagenet_input(images, **arguments)


# ---------------------------------------------------------------- pooled_features

def test_pooled_features_are_the_input_of_the_classifier():
    torch.manual_seed(0)
    model = MobileNetV2(num_classes=10, width_mult=0.35).train()
    x = torch.randn(6, 3, 32, 32)
    seen = []
    handle = model.classifier.linear.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        handle.remove()
    model.train()
    features = pooled_features(model, x, batch_size=4)  # two batches, the second one short
    assert features.shape == (6, model.last_channels) == (6, 1280)
    assert torch.allclose(features, seen[0], atol=1e-6)
    # The classifier applied to the features gives the model's own output.
    assert torch.allclose(model.classifier.linear(features), logits, atol=1e-5)
    assert model.training, "the mode is restored"
    assert not features.requires_grad


def test_pooled_features_do_not_depend_on_the_batch_size():
    torch.manual_seed(1)
    model = MobileNetV2(num_classes=3, width_mult=0.5, stages=TINY_STAGES)
    x = torch.randn(10, 3, 8, 8)
    assert torch.allclose(pooled_features(model, x, batch_size=1), pooled_features(model, x, batch_size=64),
                          atol=1e-5)


def test_pooled_features_of_the_pretrained_network_are_relu6_averages(digits):
    from mbv2.pretrained import load_pretrained

    model = load_pretrained()
    features = pooled_features(model, imagenet_input(digits.images[:3], 64))
    assert features.shape == (3, 1280)
    # The head ends with ReLU6, so every average lies in [0, 6]; not all of them are 0.
    assert features.min() >= 0 and features.max() <= 6 and (features > 0).float().mean() > 0.1


@pytest.mark.parametrize("model, x, kwargs, error, match", [
    ("resnet", torch.zeros(1, 3, 32, 32), {}, TypeError, "model must be an mbv2.MobileNetV2"),
    (None, torch.zeros(1, 1, 32, 32), {}, ValueError, "input must have 3 channels"),
    (None, torch.zeros(1, 3, 16, 16), {}, ValueError, "at least 32 pixels"),
    (None, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), {}, ValueError, "images must be a float tensor"),
    (None, torch.zeros(1, 3, 32, 32), {"batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
])
def test_pooled_features_reject_bad_arguments(model, x, kwargs, error, match):
    model = MobileNetV2(num_classes=2, width_mult=0.35) if model is None else model
    with pytest.raises(error, match=match):
        pooled_features(model, x, **kwargs)


# ---------------------------------------------------------------- sample_per_class

def test_sample_per_class_draws_exactly_n_per_class_outside_exclude(digits):
    labels = digits.target
    held_out = sample_per_class(labels, 40, seed=0)
    assert np.array_equal(np.bincount(labels[held_out]), np.full(10, 40))
    drawn = sample_per_class(labels, 30, seed=7, exclude=held_out)
    assert np.array_equal(np.bincount(labels[drawn], minlength=10), np.full(10, 30))
    assert len(np.unique(drawn)) == len(drawn) == 300
    assert np.intersect1d(drawn, held_out).size == 0
    assert drawn.dtype == np.int64 and np.all(np.diff(drawn) > 0)
    # exclude may be a list or a tensor as well.
    assert np.array_equal(drawn, sample_per_class(torch.from_numpy(labels), 30, seed=7,
                                                  exclude=list(held_out)))
    assert np.array_equal(drawn, sample_per_class(labels, 30, seed=7, exclude=torch.from_numpy(held_out)))


def test_sample_per_class_is_reproducible_nested_and_depends_on_the_seed(digits):
    labels = digits.target
    first = sample_per_class(labels, 10, seed=3)
    assert np.array_equal(first, sample_per_class(labels, 10, seed=3))
    assert not np.array_equal(first, sample_per_class(labels, 10, seed=4))
    assert np.isin(sample_per_class(labels, 5, seed=3), first).all()  # nested in n
    # Every image of a class can be drawn: the largest n takes them all.
    smallest = np.bincount(labels).min()
    everything = sample_per_class(labels, smallest, seed=0)
    assert len(everything) == 10 * smallest


def test_sample_per_class_draws_uniformly():
    # 2 classes of 4 images, n = 1: over many seeds each image is drawn about 1/4 of the time.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    counts = np.zeros(8)
    for seed in range(4000):
        counts[sample_per_class(labels, 1, seed)] += 1
    # Binomial(4000, 1/4): standard deviation about 27; allow 5 of them.
    assert np.all(np.abs(counts - 1000) < 5 * np.sqrt(4000 * 0.25 * 0.75))


@pytest.mark.parametrize("labels, n, kwargs, error, match", [
    (np.array([0, 0, 1]), 2, {}, ValueError, "n must be at most the number of images available"),
    (np.array([0, 0, 1, 1]), 2, {"exclude": [0]}, ValueError, "class 0 has 1 outside exclude"),
    (np.array([0, 1]), 0, {}, ValueError, "n must be an integer >= 1"),
    (np.array([0, 1]), 1, {"seed": -1}, ValueError, "seed must be an integer >= 0"),
    (np.array([0.0, 1.0]), 1, {}, ValueError, "labels must be a non-empty 1-D array of integer"),
    (np.array([[0, 1]]), 1, {}, ValueError, "labels must be a non-empty 1-D array of integer"),
    (np.array([0, 1]), 1, {"exclude": [2]}, ValueError, r"exclude must hold integer indices in \[0, 1\]"),
    ([0, 1], 1, {}, TypeError, "labels must be a NumPy array or a torch.Tensor"),
])
def test_sample_per_class_rejects_bad_arguments(labels, n, kwargs, error, match):
    arguments = {"seed": 0, **kwargs}
    with pytest.raises(error, match=match):
        sample_per_class(labels, n, **arguments)


# ---------------------------------------------------------------- the linear probe

def blobs(num_per_class, seed, num_classes=10, dim=1280):
    """Gaussian clusters around far-apart means: a trivially separable set.

    The means are the same for every ``seed`` (they are drawn with seed 0); ``seed`` draws
    the points around them, so two seeds give a training and a test set of one task.
    """
    means = 3.0 * np.random.default_rng(0).standard_normal((num_classes, dim))
    labels = np.repeat(np.arange(num_classes), num_per_class)
    noise = np.random.default_rng(seed + 1).standard_normal((len(labels), dim))
    return (means[labels] + 5.0 * noise).astype(np.float32), labels


def test_the_probe_separates_separable_classes():
    x_train, y_train = blobs(10, seed=0)
    x_test, y_test = blobs(50, seed=1)
    probe = fit_probe(x_train, y_train, C=0.1)
    assert probe_accuracy(probe, x_test, y_test) >= 0.95
    assert probe_accuracy(probe, x_test, y_test) == pytest.approx(probe.score(x_test, y_test))
    # One weight per feature and class, one bias per class: 1280 * 10 + 10 parameters.
    linear = probe[-1]
    assert linear.coef_.shape == (10, 1280) and linear.intercept_.shape == (10,)


def test_the_probe_is_at_chance_on_shuffled_labels():
    x, y = blobs(100, seed=2)
    y_random = np.random.default_rng(3).permutation(y)  # labels that say nothing about x
    train, test = np.arange(0, 1000, 2), np.arange(1, 1000, 2)
    probe = fit_probe(x[train], y_random[train], C=0.1)
    # 500 test images, chance 1/10: the standard deviation of the accuracy is about 0.013.
    assert abs(probe_accuracy(probe, x[test], y_random[test]) - 0.1) < 0.06
    # ... while the true labels of the same features are learnt.
    assert probe_accuracy(fit_probe(x[train], y[train], C=0.1), x[test], y[test]) >= 0.95


def test_the_probe_standardises_with_the_training_statistics():
    x, y = blobs(5, seed=4, num_classes=3, dim=6)
    probe = fit_probe(x * 100 + 7, y)
    scaler = probe[0]
    np.testing.assert_allclose(scaler.mean_, (x * 100 + 7).mean(0), rtol=1e-5)


def test_the_probe_says_when_it_does_not_converge():
    x, y = blobs(20, seed=5)
    with pytest.raises(RuntimeError, match="did not converge in max_iter=1"):
        fit_probe(x, y, C=100.0, max_iter=1)


@pytest.mark.parametrize("x, y, kwargs, error, match", [
    (np.zeros((4, 3)), np.array([0, 1, 0]), {}, ValueError, r"labels must be \(N,\) integer classes with N = 4"),
    (np.zeros((4, 3)), np.array([0.0, 1, 0, 1]), {}, ValueError, r"labels must be \(N,\) integer classes"),
    (np.zeros(4), np.array([0, 1, 0, 1]), {}, ValueError, r"features must be a non-empty \(N, D\) float array"),
    (np.zeros((4, 3)), np.array([1, 1, 1, 1]), {}, ValueError, "at least two classes"),
    (np.zeros((4, 3)), np.array([0, 1, 0, 1]), {"C": 0.0}, ValueError, "C must be a finite number > 0"),
    (np.zeros((4, 3)), np.array([0, 1, 0, 1]), {"max_iter": 0}, ValueError, "max_iter must be an integer >= 1"),
])
def test_the_probe_rejects_bad_arguments(x, y, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_probe(x, y, **kwargs)


def test_probe_accuracy_rejects_an_unfitted_probe():
    with pytest.raises(TypeError, match="probe must be a fitted classifier"):
        probe_accuracy("probe", np.zeros((2, 3)), np.array([0, 1]))


# ---------------------------------------------------------------- from scratch

@pytest.fixture(scope="module")
def zeros_and_ones(digits):
    keep = np.flatnonzero(digits.target <= 1)[:64]
    return imagenet_input(digits.images[keep], 8), torch.from_numpy(digits.target[keep]).long()


def test_train_from_scratch_rounds_the_steps_up_to_whole_epochs(zeros_and_ones):
    x, y = zeros_and_ones
    state = torch.random.get_rng_state()
    model, history = train_from_scratch(x, y, steps=5, batch_size=16, lr=0.05, seed=0,
                                        width_mult=0.5, stages=TINY_STAGES, progress=False)
    assert torch.equal(state, torch.random.get_rng_state())
    assert isinstance(model, MobileNetV2) and model.num_classes == 2 and model.width_mult == 0.5
    assert model.stage_specs == TINY_STAGES
    assert history.steps_per_epoch == 4 and len(history.step_loss) == 8  # 2 epochs of 4 steps
    assert history.test_accuracy == [] and history.seconds > 0
    again, history_again = train_from_scratch(x, y, steps=5, batch_size=16, lr=0.05, seed=0,
                                              width_mult=0.5, stages=TINY_STAGES, progress=False)
    assert history_again.step_loss == history.step_loss  # same seed, same run
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    _, other = train_from_scratch(x, y, steps=5, batch_size=16, lr=0.05, seed=1,
                                  width_mult=0.5, stages=TINY_STAGES, progress=False)
    assert other.step_loss != history.step_loss


def test_train_from_scratch_learns_zeros_and_ones(zeros_and_ones, digits):
    x, y = zeros_and_ones
    model, history = train_from_scratch(x, y, steps=80, batch_size=16, lr=0.05, seed=0,
                                        width_mult=0.5, stages=TINY_STAGES, progress=False)
    from mbv2.train import accuracy

    assert sum(history.step_loss[-4:]) < 0.5 * sum(history.step_loss[:4])
    # Zeros and ones it has not seen, in eval mode.
    other = np.flatnonzero(digits.target <= 1)[64:164]
    x_other = imagenet_input(digits.images[other], 8)
    assert accuracy(model, x_other, torch.from_numpy(digits.target[other]).long()) >= 0.9


@pytest.mark.parametrize("kwargs, error, match", [
    ({"steps": 0}, ValueError, "steps must be an integer >= 1"),
    ({"batch_size": 65}, ValueError, r"batch_size must be at most the number of images \(64\)"),
    ({"seed": -1}, ValueError, "seed must be an integer >= 0"),
    ({"labels": torch.zeros(64)}, ValueError, r"labels must be a non-empty \(N,\) int64 tensor"),
    ({"images": np.zeros((64, 3, 8, 8))}, TypeError, "images and labels must be tensors"),
])
def test_train_from_scratch_rejects_bad_arguments(zeros_and_ones, kwargs, error, match):
    x, y = zeros_and_ones
    arguments = {"images": x, "labels": y, "steps": 1, "batch_size": 16, "lr": 0.05, "seed": 0,
                 "stages": TINY_STAGES, "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        train_from_scratch(arguments.pop("images"), arguments.pop("labels"), **arguments)


def test_fit_without_a_test_set_records_no_accuracy(zeros_and_ones):
    x, y = zeros_and_ones
    torch.manual_seed(0)
    model = MobileNetV2(num_classes=2, width_mult=0.5, stages=TINY_STAGES)
    history = fit(model, (x, y), None, epochs=1, batch_size=32, progress=False)
    assert len(history.step_loss) == 2 and history.test_accuracy == []
    with pytest.raises(ValueError, match="fit ran with test=None"):
        history.final_test_accuracy
    with pytest.raises(TypeError, match="test must be a pair of tensors"):
        fit(model, (x, y), x, epochs=1, batch_size=32, progress=False)


# ---------------------------------------------------------------- the selection rule

def test_cheapest_within_takes_the_cheapest_candidate_near_the_best():
    # Cheapest first: 32 px is 3 points below the best, 64 px 0.5 below, 128 px is the best.
    assert cheapest_within([32, 64, 128], [0.90, 0.925, 0.93], tolerance=0.01) == 64
    assert cheapest_within([32, 64, 128], [0.90, 0.925, 0.93], tolerance=0.0) == 128
    assert cheapest_within([32, 64, 128], [0.90, 0.925, 0.93], tolerance=0.05) == 32
    # A tie with no tolerance goes to the first (cheapest) of the tied candidates.
    assert cheapest_within(["a", "b", "c"], [0.2, 0.7, 0.7], tolerance=0) == "b"
    # The best candidate is never beaten by a cheaper one outside the tolerance.
    assert cheapest_within([1, 2], [0.5, 0.9], tolerance=0.3) == 2


@pytest.mark.parametrize("candidates, scores, tolerance, match", [
    ([], [], 0.0, "must be non-empty and of the same length"),
    ([1, 2], [0.5], 0.0, "must be non-empty and of the same length"),
    ([1, 2], [0.5, float("nan")], 0.0, "scores must be finite"),
    ([1, 2], [0.5, 0.6], -0.1, "tolerance must be a finite number >= 0"),
])
def test_cheapest_within_rejects_bad_arguments(candidates, scores, tolerance, match):
    with pytest.raises(ValueError, match=match):
        cheapest_within(candidates, scores, tolerance)


def test_pooled_features_show_progress_only_when_asked(capsys):
    model = MobileNetV2(num_classes=2, width_mult=0.5, stages=TINY_STAGES)
    x = torch.randn(4, 3, 8, 8)
    pooled_features(model, x, batch_size=2, progress=True)
    assert "0/2" in capsys.readouterr().err
    pooled_features(model, x, batch_size=2)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress must be True or False"):
        pooled_features(model, x, progress=1)


def test_stopwatch_measures_the_time_of_its_block():
    import time

    with Stopwatch() as watch:
        start = time.perf_counter()
        time.sleep(0.05)
        inside = time.perf_counter() - start
    assert inside <= watch.seconds < inside + 0.05
