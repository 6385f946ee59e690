import pytest
import torch
import torchvision
from torch import nn

from mbv2 import MobileNetV2, load_torchvision_weights, torchvision_key_map
from mbv2.torchvision_compat import randomised_torchvision, torchvision_difference

WIDTHS = [0.35, 0.5, 0.75, 1.0, 1.3, 1.4]
# The parameter counts torchvision's documentation gives for 1000 classes.
DOCUMENTED = {0.35: 1_677_128, 0.5: 1_968_680, 0.75: 2_636_424, 1.0: 3_504_872,
              1.3: 5_386_792, 1.4: 6_108_776}


def count(model):
    return sum(p.numel() for p in model.parameters())


def saturated_fraction(model, x):
    """The fraction of ReLU6 outputs equal to 6 when ``model`` runs on ``x``."""
    outputs = []
    handles = [m.register_forward_hook(lambda m, i, o: outputs.append(o))
               for m in model.modules() if isinstance(m, nn.ReLU6)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return sum((o == 6).sum().item() for o in outputs) / sum(o.numel() for o in outputs)


@pytest.mark.parametrize("width_mult", WIDTHS)
def test_parameter_count_equals_torchvision(width_mult):
    ours = count(MobileNetV2(width_mult=width_mult))
    theirs = count(torchvision.models.mobilenet_v2(width_mult=width_mult))
    assert ours == theirs == DOCUMENTED[width_mult]


@pytest.mark.parametrize("width_mult", WIDTHS)
def test_outputs_equal_torchvision_after_loading(width_mult):
    reference = randomised_torchvision(width_mult)
    model = load_torchvision_weights(MobileNetV2(width_mult=width_mult), reference.state_dict())
    model.eval()
    for resolution in (224, 160):
        x = torch.randn(2, 3, resolution, resolution)
        with torch.no_grad():
            ours, theirs = model(x), reference(x)
        assert ours.shape == theirs.shape == (2, 1000)
        assert (ours - theirs).abs().max() <= 1e-5
        # The comparison is not between two constant outputs, and it exercises the cap of
        # ReLU6 (a model with plain ReLU would fail it).
        assert theirs.std() > 1e-3
        assert saturated_fraction(reference, x) > 0.01


def test_key_map_is_a_bijection_onto_torchvision_keys():
    for width_mult, num_classes in [(1.0, 1000), (0.5, 10)]:
        key_map = torchvision_key_map(MobileNetV2(num_classes, width_mult))
        theirs = torchvision.models.mobilenet_v2(num_classes=num_classes, width_mult=width_mult)
        assert sorted(key_map.values()) == sorted(theirs.state_dict())
    assert key_map["stem.conv.weight"] == "features.0.0.weight"
    assert key_map["stages.0.0.depthwise.conv.weight"] == "features.1.conv.0.0.weight"
    assert key_map["stages.1.0.expansion.bn.running_var"] == "features.2.conv.0.1.running_var"
    assert key_map["stages.1.0.projection.conv.weight"] == "features.2.conv.2.weight"
    assert key_map["head.bn.bias"] == "features.18.1.bias"
    assert key_map["classifier.linear.weight"] == "classifier.1.weight"


def test_loading_copies_every_tensor():
    reference = randomised_torchvision(1.0)
    model = load_torchvision_weights(MobileNetV2(), reference.state_dict())
    theirs = reference.state_dict()
    for ours_key, their_key in torchvision_key_map(model).items():
        assert torch.equal(model.state_dict()[ours_key], theirs[their_key]), ours_key


def test_missing_keys_are_listed_and_nothing_is_loaded():
    state = torchvision.models.mobilenet_v2().state_dict()
    del state["features.5.conv.1.0.weight"]
    del state["classifier.1.bias"]
    model = MobileNetV2()
    before = model.stem.conv.weight.clone()
    with pytest.raises(ValueError, match="2 missing keys: features.5.conv.1.0.weight, classifier.1.bias"):
        load_torchvision_weights(model, state)
    assert torch.equal(model.stem.conv.weight, before)


def test_extra_keys_are_listed():
    state = torchvision.models.mobilenet_v2().state_dict()
    state["features.19.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="1 unexpected keys: features.19.0.weight"):
        load_torchvision_weights(MobileNetV2(), state)


def test_misshaped_keys_are_listed_with_both_shapes():
    state = torchvision.models.mobilenet_v2(num_classes=10).state_dict()
    with pytest.raises(ValueError) as error:
        load_torchvision_weights(MobileNetV2(num_classes=1000), state)
    message = str(error.value)
    assert "2 keys with the wrong shape" in message
    assert "classifier.1.weight: expected (1000, 1280), got (10, 1280)" in message
    assert "classifier.1.bias: expected (1000,), got (10,)" in message
    assert "num_classes=1000" in message


def test_a_different_width_is_refused_and_long_lists_are_shortened():
    state = torchvision.models.mobilenet_v2(width_mult=0.5).state_dict()
    with pytest.raises(ValueError, match=r"keys with the wrong shape: .*\.\.\. and \d+ more"):
        load_torchvision_weights(MobileNetV2(width_mult=1.0), state)


def test_wrong_argument_types():
    with pytest.raises(TypeError, match="model must be an mbv2.MobileNetV2"):
        load_torchvision_weights(torchvision.models.mobilenet_v2(), {})
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        load_torchvision_weights(MobileNetV2(), [1, 2])


def test_torchvision_difference_is_small_and_seeded():
    difference, ours, reference = torchvision_difference(0.5, seed=3)
    assert difference < 1e-5 and not ours.training and not reference.training
    a, b = randomised_torchvision(seed=1), randomised_torchvision(seed=1)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    c = randomised_torchvision(seed=2)
    assert not torch.equal(a.features[1].conv[0][1].weight, c.features[1].conv[0][1].weight)


def test_torchvision_difference_sees_a_wrong_batch_norm_epsilon():
    # The check can fail: a model whose batch norm uses another epsilon differs.
    reference = randomised_torchvision(seed=0)
    ours = load_torchvision_weights(MobileNetV2(), reference.state_dict()).eval()
    for module in ours.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() > 1e-3
