import pytest
import torch
from torch import nn

import mbv2
from mbv2 import InvertedResidual, markdown_table, paper_shape, trace_shapes


def test_trace_shapes_follows_a_block_in_order_and_restores_the_mode():
    block = InvertedResidual(16, 24, stride=2, expand_ratio=6).train()
    running_mean = block.expansion.bn.running_mean.clone()
    records = trace_shapes(block, torch.randn(1, 16, 10, 10), ["projection", "expansion", "depthwise"])
    assert [(r.name, r.input_shape, r.output_shape) for r in records] == [
        ("expansion", (1, 16, 10, 10), (1, 96, 10, 10)),
        ("depthwise", (1, 96, 10, 10), (1, 96, 5, 5)),
        ("projection", (1, 96, 5, 5), (1, 24, 5, 5)),
    ]
    assert records[0].module == "ConvBNAct"
    assert block.training
    assert torch.equal(block.expansion.bn.running_mean, running_mean)
    assert not block.expansion._forward_hooks


def test_trace_shapes_defaults_to_children_and_rejects_unknown_names():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    assert [r.name for r in trace_shapes(model, torch.randn(1, 3, 5, 5))] == ["0", "1"]
    with pytest.raises(ValueError, match="names must be submodules of model; not found: head"):
        trace_shapes(model, torch.randn(1, 3, 5, 5), ["head"])


def test_markdown_table_formats_cells():
    table = markdown_table(["a", "b", "c", "d"], [(1234567, (1, 3, 224), True, "x|y")])
    assert table.splitlines() == ["| a | b | c | d |", "|---|---|---|---|",
                                  "| 1,234,567 | 1×3×224 | yes | x\\|y |"]
    with pytest.raises(ValueError, match="rows\\[0\\] has 1 cells, the header has 2"):
        markdown_table(["a", "b"], [(1,)])


def test_paper_shape():
    assert paper_shape((32, 112, 112)) == "112²×32"
    assert paper_shape((32, 112, 96)) == "112×96×32"
    assert paper_shape((1000,)) == "1000"
    with pytest.raises(ValueError, match=r"shape must be \(C,\) or \(C, H, W\), got \(1, 2\)"):
        paper_shape((1, 2))


def test_capture_returns_the_submodule_outputs_and_the_model_output():
    model = mbv2.MobileNetV2().train()
    x = torch.randn(2, 3, 64, 64)
    output, outputs = mbv2.capture(model, x, ["stem", "stages.1.0.depthwise", "head"])
    assert model.training  # the mode is restored
    assert list(outputs) == ["stem", "stages.1.0.depthwise", "head"]
    assert outputs["stem"].shape == (2, 32, 32, 32)
    assert outputs["stages.1.0.depthwise"].shape == (2, 96, 16, 16)
    with torch.no_grad():
        model.eval()
        assert torch.equal(output, model(x))
        assert torch.equal(outputs["stem"], model.stem(x))
        assert torch.equal(outputs["head"], model.head(model.stages(model.stem(x))))
    with pytest.raises(ValueError, match="not found: nope"):
        mbv2.capture(model, x, ["nope"])


def test_run_with_hooks_uses_batch_statistics_only_when_asked_and_restores_modes():
    model = mbv2.MobileNetV2()
    model.stem.bn.running_mean.fill_(5.0)  # statistics far from those of any batch
    model.train()
    model.head.eval()  # a mixed state, restored module by module
    x = torch.randn(4, 3, 32, 32)
    seen = {}

    def hook(module, inputs, output):
        seen["mean"] = output.mean(dim=(0, 2, 3))

    mbv2.run_with_hooks(model, x, [(model.stem.bn, hook)])
    assert seen["mean"].max() < -1  # the running mean of 5 was subtracted
    mbv2.run_with_hooks(model, x, [(model.stem.bn, hook)], batch_statistics=True)
    torch.testing.assert_close(seen["mean"], model.stem.bn.bias.detach(), atol=1e-5, rtol=0)
    assert model.training and not model.head.training and model.stem.training
    assert not model.stem.bn._forward_hooks  # removed
    with pytest.raises(TypeError, match="batch_statistics"):
        mbv2.run_with_hooks(model, x, [], batch_statistics="yes")


def test_layer_summary_counts_like_torchinfo_and_labels_the_unit():
    import torchinfo

    from mbv2.tables import layer_summary

    model = mbv2.MobileNetV2(width_mult=0.5)
    stats = layer_summary(model, 160, depth=2)
    plain = torchinfo.summary(model, input_size=(1, 3, 160, 160), verbose=0)
    assert (stats.total_params, stats.total_mult_adds) == (plain.total_params, plain.total_mult_adds)
    text = str(stats)
    assert "Total mult-adds (millions):" in text and "Units." not in text
    assert "(stages)" in text and "[1, 1280, 5, 5]" in text
    with pytest.raises(ValueError, match="resolution must be an integer >= 1"):
        layer_summary(model, 0)
