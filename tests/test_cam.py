"""Class activation maps (Zhou et al. 2016) on MobileNetV2: exact, checked, clear errors."""

import pytest
import torch

import mbv2
from mbv2 import pretrained, photos
from mbv2.cam import class_activation_map, receptive_field, upsample_map


def randomised(model):
    """Random batch-norm statistics and classifier bias, so that every term matters."""
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
        model.classifier.linear.bias.normal_(0, 1)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return randomised(mbv2.MobileNetV2())


def test_map_mean_plus_bias_is_the_logit(model):
    x = torch.randn(3, 3, 224, 224)
    classes = [0, 417, 999]
    maps = class_activation_map(model, x, classes)
    assert maps.shape == (3, 7, 7)
    with torch.no_grad():
        logits = model(x)[torch.arange(3), classes]
    bias = model.classifier.linear.bias[classes]
    assert bias.abs().min() > 0.05  # the bias term is really tested
    torch.testing.assert_close(maps.mean((1, 2)) + bias, logits, atol=1e-5, rtol=1e-5)
    # without the bias the identity fails: the test can tell the two apart
    assert not torch.allclose(maps.mean((1, 2)), logits, atol=1e-3)


def test_the_identity_holds_for_the_trained_network():
    trained = pretrained.load_pretrained()
    batch = pretrained.preprocess([photos.load_photo("coffee"), photos.load_photo("chelsea")])
    with torch.no_grad():
        logits = trained(batch)
    top = logits.argmax(1)
    maps = class_activation_map(trained, batch, top)
    torch.testing.assert_close(
        maps.mean((1, 2)) + trained.classifier.linear.bias[top],
        logits[torch.arange(2), top], atol=1e-4, rtol=1e-5,
    )


def test_each_cell_is_the_classifier_row_dotted_with_the_head_features(model):
    x = torch.randn(1, 3, 96, 128)  # not square: a 3 x 4 map
    k = 123
    maps = class_activation_map(model, x, k)
    assert maps.shape == (1, 3, 4)
    with torch.no_grad():
        features = model.head(model.stages(model.stem(x)))[0]  # (1280, 3, 4)
    w = model.classifier.linear.weight.detach()[k]
    for i in range(3):
        for j in range(4):
            expected = sum(float(w[c]) * float(features[c, i, j]) for c in range(1280))
            assert maps[0, i, j].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_one_index_for_all_images_or_one_per_image(model):
    x = torch.randn(2, 3, 64, 64)
    both = class_activation_map(model, x, torch.tensor([5, 7]))
    # (batch size changes the order of the float sums, hence close, not equal)
    torch.testing.assert_close(both[0], class_activation_map(model, x[:1], 5)[0])
    torch.testing.assert_close(both[1], class_activation_map(model, x[1:], 7)[0])
    shared = class_activation_map(model, x, torch.tensor(5))
    assert torch.equal(shared, class_activation_map(model, x, [5, 5]))


def test_training_mode_is_restored_and_does_not_change_the_map(model):
    x = torch.randn(2, 3, 64, 64)
    in_eval = class_activation_map(model, x, 3)
    running_mean = model.stem.bn.running_mean.clone()
    model.train()
    try:
        in_training = class_activation_map(model, x, 3)
        assert model.training
    finally:
        model.eval()
    assert torch.equal(in_eval, in_training)  # dropout off, running statistics used
    assert torch.equal(model.stem.bn.running_mean, running_mean)


@pytest.mark.parametrize("bad", [-1, 1000, 2.5, True, "3", [1], [1, 2, 3], [1.0, 2.0],
                                 torch.tensor([1.0, 2.0]), torch.zeros(2, 1, dtype=torch.long),
                                 None])
def test_bad_class_index_is_refused_clearly(model, bad):
    with pytest.raises(ValueError, match=r"class_index must be an integer in \[0, 999\]"):
        class_activation_map(model, torch.randn(2, 3, 64, 64), bad)


def test_bad_model_and_batch(model):
    with pytest.raises(TypeError, match="model must be an mbv2.MobileNetV2"):
        class_activation_map(torch.nn.Linear(3, 3), torch.randn(1, 3, 64, 64), 0)
    with pytest.raises(TypeError, match="batch must be a torch.Tensor"):
        class_activation_map(model, [[0.0]], 0)
    with pytest.raises(ValueError, match="float"):
        class_activation_map(model, torch.zeros(1, 3, 64, 64, dtype=torch.uint8), 0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        class_activation_map(model, torch.randn(3, 64, 64), 0)
    with pytest.raises(ValueError, match="at least 32"):
        class_activation_map(model, torch.randn(1, 3, 16, 16), 0)


def test_upsample_map_puts_each_value_over_its_cell():
    maps = torch.arange(49.0).reshape(1, 7, 7)
    up = upsample_map(maps, 224)
    assert up.shape == (1, 224, 224)
    # a constant map stays constant
    torch.testing.assert_close(upsample_map(torch.full((2, 7, 7), 3.0), (224, 112)),
                               torch.full((2, 224, 112), 3.0))
    # at an interior cell's centre (between pixels 32i+15 and 32i+16) the value is the cell's
    for i in range(1, 6):
        for j in range(1, 6):
            block = up[0, 32 * i + 15: 32 * i + 17, 32 * j + 15: 32 * j + 17]
            assert block.mean().item() == pytest.approx(maps[0, i, j].item(), abs=1e-4)
    # a single peak stays inside its cell's block of pixels
    peak = torch.zeros(1, 7, 7)
    peak[0, 2, 5] = 1.0
    row, col = divmod(upsample_map(peak, 224)[0].argmax().item(), 224)
    assert row // 32 == 2 and col // 32 == 5


@pytest.mark.parametrize("maps, size, match", [
    (torch.zeros(7, 7), 224, "maps must be an"),
    (torch.zeros(1, 7, 7, dtype=torch.long), 224, "float"),
    (torch.zeros(1, 7, 7), 0, "size must be an integer >= 1"),
    (torch.zeros(1, 7, 7), (224, 224, 3), r"size must be an integer or \(height, width\)"),
    (torch.zeros(1, 7, 7), (224, -1), r"size\[1\]"),
])
def test_upsample_map_bad_arguments(maps, size, match):
    with pytest.raises(ValueError, match=match):
        upsample_map(maps, size)


def footprint(model, side):
    """Rows of the input that the centre position of the head's map depends on, by autograd."""
    x = torch.randn(1, 3, side, side, requires_grad=True)
    model = model.eval()
    features = model.head(model.stages(model.stem(x)))
    h = features.shape[2] // 2
    features[0, :, h, h].sum().backward()
    rows = (x.grad[0].abs().sum((0, 2)) > 0).nonzero()[:, 0]
    assert 0 < rows.min() and rows.max() < side - 1  # the footprint is not cut by the border
    return int(rows.max() - rows.min() + 1)


def test_receptive_field_matches_the_gradient_footprint():
    small = mbv2.MobileNetV2(stages=[(1, 16, 1, 1), (6, 24, 2, 2)])
    # by hand: stem 3 (jump 2); dw stride 1: +2*2; dw stride 2: +2*2 (jump 4); dw: +2*4
    assert receptive_field(small) == 3 + 4 + 4 + 8 == 19
    assert footprint(small, 64) == 19
    full = mbv2.MobileNetV2()
    assert receptive_field(full) == 491
    assert footprint(full, 544) == 491


def test_receptive_field_needs_the_books_model():
    with pytest.raises(TypeError, match="model must be an mbv2.MobileNetV2"):
        receptive_field(torch.nn.Conv2d(3, 3, 3))
