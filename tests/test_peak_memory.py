import pytest
import torch
from torch import nn

from mbv2 import MobileNetV2
from mbv2.memory import split_model
from mbv2.peak_memory import allocator_peak, tensor_peak


def test_tensor_peak_by_hand():
    # conv output and ReLU output (not in place) are alive together: 2 x 8 x 16 x 16 floats.
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU())
    peak = tensor_peak(model, torch.randn(1, 3, 16, 16))
    assert peak.bytes == 2 * 8 * 16 * 16 * 4
    assert peak.alive == (8 * 16 * 16 * 4,) * 2 and peak.operation == "relu"
    in_place = tensor_peak(nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(inplace=True)), torch.randn(1, 3, 16, 16))
    assert in_place.bytes == 8 * 16 * 16 * 4


def test_the_split_lowers_both_measurements_and_the_allocator_sees_at_least_the_tensors():
    model = MobileNetV2(width_mult=0.5).eval()
    x = torch.randn(1, 3, 128, 128)
    whole, split = tensor_peak(model, x), tensor_peak(split_model(model, 8), x)
    assert split.bytes < 0.7 * whole.bytes
    assert allocator_peak(model, x) >= whole.bytes
    assert allocator_peak(split_model(model, 8), x) < allocator_peak(model, x)
    assert model.training is False


def test_modes_are_restored_and_bad_arguments():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Dropout()).train()
    tensor_peak(model, torch.randn(1, 3, 4, 4))
    assert model.training
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        tensor_peak("model", torch.zeros(1))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        allocator_peak(nn.Identity(), [1.0])


def test_timeline_follows_the_operations():
    from mbv2.peak_memory import tensor_timeline

    model = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.ReLU(), nn.Flatten())
    timeline = tensor_timeline(model, torch.randn(1, 3, 4, 4))
    size = 8 * 4 * 4 * 4
    assert [name for name, _ in timeline] == ["conv2d", "relu", "flatten"]
    assert [total for _, total in timeline] == [size, 2 * size, size]  # the conv output is freed
    assert max(t for _, t in timeline) == tensor_peak(model, torch.randn(1, 3, 4, 4)).bytes
