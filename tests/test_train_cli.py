"""python -m mbv2.train (mbv2.loop, mbv2.distributed): two processes under torchrun, resume.

Tiny runs on the 8x8 digits upsampled to 32x32, at width 0.25, on the CPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mbv2 import MobileNetV2
from mbv2.distributed import state_digest
from mbv2.loop import CHECKPOINT, SUMMARY, TrainConfig, run
from mbv2.train import main

TINY = ["--data", "digits", "--width", "0.25", "--batch-size", "32", "--threads", "1"]


def _model_from(checkpoint: Path) -> MobileNetV2:
    state = torch.load(checkpoint, weights_only=True)
    model = MobileNetV2(num_classes=10, width_mult=state["config"]["width"])
    model.load_state_dict(state["model"])
    return model


def test_two_processes_under_torchrun_stay_identical_and_learn(tmp_path):
    out, logs = tmp_path / "run", tmp_path / "logs"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "--log-dir", str(logs), "--tee", "3",
        "-m", "mbv2.train", *TINY, "--recipe", "book", "--lr", "0.05", "--steps", "40",
        "--eval-every", "20", "--out", str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    print(" ".join(command[1:]), done.stdout, done.stderr, sep="\n")  # shown with pytest -s
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 64
    assert len(summary["step_loss"]) == 40 and [e["step"] for e in summary["evals"]] == [20, 40]
    # Both processes end with the same parameters and batch-norm statistics, the ones saved.
    digests = summary["state_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert digests[0] == state_digest(_model_from(out / CHECKPOINT))
    # The loss (averaged over both processes) falls.
    first, last = summary["step_loss"][:5], summary["step_loss"][-5:]
    assert sum(last) < 0.8 * sum(first)
    # The progress bar is drawn by rank 0 only.
    stderr = {p.parent.name: p.read_text() for p in logs.rglob("stderr.log")}
    assert set(stderr) == {"0", "1"}
    assert "40/40" in stderr["0"] and "step/s" in stderr["0"]
    assert "step/s" not in stderr["1"]


def _tiny(out, **kwargs):
    defaults = dict(data="digits", width=0.25, batch_size=32, recipe="paper", seed=3,
                    out=str(out), progress=False, threads=1)
    return TrainConfig(**{**defaults, **kwargs})


def test_a_resumed_run_continues_exactly(tmp_path):
    threads = torch.get_num_threads()
    straight = run(_tiny(tmp_path / "a", steps=4))
    run(_tiny(tmp_path / "b", steps=2))
    resumed = run(_tiny(tmp_path / "b", steps=4, resume=True))
    # Same losses step by step (same batches, same dropout masks, same optimizer state) ...
    assert resumed["step_loss"] == straight["step_loss"] and len(resumed["step_loss"]) == 4
    assert resumed["lr"] == straight["lr"]
    # ... and the same model, weight average and optimizer state at the end.
    a, b = (torch.load(tmp_path / d / CHECKPOINT, weights_only=True) for d in "ab")
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        state_a = a[key] if key == "model" else a[key]["module"]
        state_b = b[key] if key == "model" else b[key]["module"]
        assert state_a.keys() == state_b.keys()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a), key
    assert a["ema"]["updates"] == b["ema"]["updates"] == 4
    for s_a, s_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(s_a[k], s_b[k]) for k in s_a)
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert torch.get_num_threads() == threads  # run() set 1 thread, then restored it


def test_resume_refuses_a_different_run(tmp_path):
    run(_tiny(tmp_path, steps=2, recipe="book"))
    with pytest.raises(ValueError, match=r"cannot resume.*width: 0.25 -> 0.5"):
        run(_tiny(tmp_path, steps=4, recipe="book", width=0.5, resume=True))
    with pytest.raises(ValueError, match="one-cycle schedule spans the whole run"):
        run(_tiny(tmp_path, steps=4, recipe="book", resume=True))


@pytest.mark.parametrize("argv, match", [
    (["--steps", "0"], "steps must be an integer >= 1"),
    (["--resume"], "resume needs out"),
    (["--sync-bn", "--device", "cpu"], "sync_bn needs GPUs"),
    (["--batch-size", "5000", "--steps", "1"], "more than the 1257 training images"),
    (["--lr", "-1"], "lr must be a finite number > 0"),
])
def test_the_command_line_rejects_bad_arguments(argv, match, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--no-progress"])
    assert stop.value.code == 2
    assert match in capsys.readouterr().err


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--resume", "--out", str(tmp_path), "--no-progress"])
    assert "checkpoint.pt" in capsys.readouterr().err


def _image_folders(root: Path, splits=("train", "val", "test"), classes=("cat", "dog", "fox")):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split in splits:
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = torch.randint(0, 256, (40 + 8 * i, 48, 3), generator=generator,
                                       dtype=torch.uint8)
                pixels[..., label] = 255  # each class has one saturated channel
                Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.png")


def test_training_on_image_folders(tmp_path):
    # The layout of ImageNet: DIR/train/CLASS/*.png, DIR/val/..., DIR/test/... (optional).
    _image_folders(tmp_path / "images")
    summary = main(["--data", "imagefolder", "--data-dir", str(tmp_path / "images"),
                    "--image-size", "32", "--width", "0.25", "--batch-size", "4", "--steps", "3",
                    "--recipe", "paper", "--threads", "1", "--workers", "1", "--no-progress"])
    assert summary["steps_per_epoch"] == 3 and len(summary["step_loss"]) == 3
    assert 0 <= summary["test_accuracy_ema"] <= 1 and summary["evals"][-1]["val_accuracy"] >= 0
    assert summary["config"]["data_dir"] == str(tmp_path / "images")


def test_image_folders_without_test_and_bad_layouts(tmp_path):
    from mbv2.data import load_image_folders

    _image_folders(tmp_path / "a", splits=("train", "val"))
    folders = load_image_folders(tmp_path / "a", image_size=32)
    assert folders.test is None and folders.classes == ["cat", "dog", "fox"]
    x, y = folders.val[5]
    assert x.shape == (3, 32, 32) and y == 1
    summary = run(TrainConfig(data="imagefolder", data_dir=str(tmp_path / "a"), image_size=32,
                              width=0.25, batch_size=6, steps=1, threads=1, progress=False))
    assert "test_accuracy" not in summary and summary["evals"]
    _image_folders(tmp_path / "b", splits=("train",))
    with pytest.raises(FileNotFoundError, match="must hold train/ and val/"):
        load_image_folders(tmp_path / "b")
    _image_folders(tmp_path / "c", splits=("train",))
    _image_folders(tmp_path / "c", splits=("val",), classes=("cat", "dog"))
    with pytest.raises(ValueError, match="must have the class folders"):
        load_image_folders(tmp_path / "c")
    with pytest.raises(ValueError, match="data_dir is needed"):
        TrainConfig(data="imagefolder").check()
    with pytest.raises(ValueError, match="data_dir is needed"):
        TrainConfig(data="digits", data_dir=str(tmp_path)).check()
