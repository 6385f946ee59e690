import pytest
import torch
from torch import nn

from mbv2.benchmark import median_seconds


def test_a_large_convolution_takes_longer_than_an_identity():
    x = torch.randn(1, 128, 56, 56)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    slow = median_seconds(conv, x, repeats=5)
    fast = median_seconds(nn.Identity(), x, repeats=5)
    assert 0 < fast < slow


def test_restores_mode_and_threads():
    module = nn.Sequential(nn.Linear(4, 4), nn.Dropout()).train()
    threads = torch.get_num_threads()
    median_seconds(module, torch.randn(2, 4), repeats=3, num_threads=1)
    assert module.training and torch.get_num_threads() == threads


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(module=lambda x: x), TypeError, "module must be a torch.nn.Module"),
    (dict(repeats=0), ValueError, "repeats must be an integer >= 1"),
    (dict(num_threads=0), ValueError, "num_threads must be an integer >= 1"),
])
def test_bad_arguments(kwargs, error, match):
    arguments = dict(module=nn.Identity(), x=torch.zeros(1)) | kwargs
    with pytest.raises(error, match=match):
        median_seconds(**arguments)
