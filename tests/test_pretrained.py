"""The trained network: finding, checking and loading the weights; photos; predictions."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import mbv2
from mbv2 import photos, pretrained


@pytest.fixture(scope="module")
def model():
    return pretrained.load_pretrained()


@pytest.fixture(scope="module")
def reference():
    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(pretrained.weights_path(), weights_only=True))
    return net.eval()


def test_the_installed_file_is_torchvisions():
    path = pretrained.weights_path()
    assert path.name == "mobilenet_v2-b0353104.pth"
    # torchvision names its files after the first hex digits of their SHA-256.
    assert pretrained.WEIGHTS_SHA256.startswith(path.stem.rsplit("-", 1)[1])
    assert pretrained.verify_weights(path) == path


def test_a_corrupted_copy_is_refused(tmp_path):
    copy = tmp_path / pretrained.WEIGHTS_FILE
    shutil.copyfile(pretrained.weights_path(), copy)
    with open(copy, "r+b") as f:  # flip one byte in the middle of the tensors
        f.seek(copy.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="SHA-256"):
        pretrained.verify_weights(copy)
    with pytest.raises(ValueError, match="SHA-256"):
        pretrained.load_pretrained(copy)


def test_the_hub_cache_is_looked_at_first(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cached = tmp_path / "checkpoints" / pretrained.WEIGHTS_FILE
    cached.parent.mkdir()
    shutil.copyfile(pretrained.candidate_paths()[1], cached)
    assert pretrained.candidate_paths()[0] == cached
    assert pretrained.weights_path() == cached


def test_missing_file_names_both_remedies(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(pretrained, "_PACKAGE_MODULE", "no_such_weights_package")
    with pytest.raises(pretrained.WeightsNotFoundError) as error:
        pretrained.load_pretrained()
    message = str(error.value)
    assert "requirements-weights.txt" in message and pretrained.WEIGHTS_PACKAGE in message
    assert "download=True" in message and "IMAGENET1K_V1" in message
    assert str(tmp_path) in message


def test_no_network_unless_asked(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    pretrained.load_pretrained()  # found offline, no download


def test_bad_arguments():
    with pytest.raises(TypeError, match="download"):
        pretrained.load_pretrained(download="yes")
    with pytest.raises(FileNotFoundError, match="path"):
        pretrained.load_pretrained("/nonexistent/weights.pth")


def test_outputs_equal_torchvision_exactly(model, reference):
    x = pretrained.preprocess([photos.load_photo("coffee"), photos.load_photo("china")])
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert not model.training


def test_categories_and_preprocessing_come_from_torchvision():
    names = pretrained.categories()
    assert len(names) == 1000 and names[0] == "tench"
    transform = pretrained.preprocessing()
    assert transform.resize_size == [256] and transform.crop_size == [224]
    assert transform.mean == [0.485, 0.456, 0.406] and transform.std == [0.229, 0.224, 0.225]


def test_preprocess_resizes_crops_and_normalises():
    image = photos.load_photo("coffee")  # 400 x 600
    x = pretrained.preprocess(image)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    # A uniform image becomes (value - mean) / std in every pixel.
    gray = np.full((300, 500, 3), 128, dtype=np.uint8)
    y = pretrained.preprocess(gray)[0]
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(y.mean(dim=(1, 2)), expected, rtol=0, atol=1e-5)
    # The same image as an array, a PIL image and a tensor gives the same batch.
    pil = pretrained.preprocess(Image.fromarray(image))
    tensor = pretrained.preprocess(torch.from_numpy(image).permute(2, 0, 1))
    assert torch.equal(x, pil) and torch.equal(x, tensor)
    # A flipped view (negative strides) and a read-only array are taken as they are.
    flipped = pretrained.preprocess(image[:, ::-1])
    assert torch.equal(flipped, pretrained.preprocess(np.ascontiguousarray(image[:, ::-1])))
    frozen = image.copy()
    frozen.flags.writeable = False
    assert torch.equal(pretrained.preprocess(frozen), x)


@pytest.mark.parametrize(
    "photo, expected_top1",
    [("coffee", "espresso"), ("camera", "tripod"), ("china", "palace")],
)
def test_known_photos_get_their_known_class(model, photo, expected_top1):
    (best, *_), = pretrained.top_k(pretrained.predict(model, photos.load_photo(photo)), k=5)
    assert best.name == expected_top1
    assert best.probability > 0.5


def test_chelsea_has_cat_classes_in_its_top_3(model):
    (top3,) = pretrained.top_k(pretrained.predict(model, photos.load_photo("chelsea")), k=3)
    assert {p.name for p in top3} <= {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "lynx"}


def test_predict_and_top_k(model):
    batch = pretrained.preprocess([photos.load_photo("coffee"), photos.load_photo("camera")])
    p = pretrained.predict(model, batch=batch)
    assert p.shape == (2, 1000)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(2))
    top = pretrained.top_k(p, k=3)
    assert [len(row) for row in top] == [3, 3]
    assert top[0][0].probability >= top[0][1].probability >= top[0][2].probability
    assert pretrained.categories()[top[1][0].index] == top[1][0].name


def test_bad_images_get_clear_errors(model):
    coffee = photos.load_photo("coffee")
    with pytest.raises(ValueError, match="grayscale"):
        pretrained.preprocess(coffee[..., 0])
    with pytest.raises(ValueError, match="alpha"):
        pretrained.preprocess(np.concatenate([coffee, coffee[..., :1]], axis=-1))
    with pytest.raises(ValueError, match="uint8"):
        pretrained.preprocess(coffee.astype(np.float64))
    with pytest.raises(ValueError, match="mode 'L'"):
        pretrained.preprocess(Image.fromarray(coffee[..., 0]))
    with pytest.raises(TypeError, match="PIL image"):
        pretrained.preprocess("coffee.png")
    with pytest.raises(ValueError, match=r"images\[1\]"):
        pretrained.preprocess([coffee, coffee[..., 0]])
    with pytest.raises(ValueError, match="empty"):
        pretrained.preprocess([])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        pretrained.preprocess(torch.zeros(1, 3, 224, 224))
    with pytest.raises(ValueError, match="batch must be a preprocessed"):
        pretrained.predict(model, batch=torch.zeros(3, 224, 224))
    with pytest.raises(ValueError, match="float"):
        pretrained.predict(model, batch=torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    with pytest.raises(ValueError, match="exactly one"):
        pretrained.predict(model)
    with pytest.raises(ValueError, match="k must be"):
        pretrained.top_k(torch.ones(1, 1000), k=1001)
    with pytest.raises(ValueError, match="one column per ImageNet class"):
        pretrained.top_k(torch.ones(1, 10), k=3)


@pytest.mark.parametrize("name", photos.photo_names())
def test_every_photo_loads_as_rgb_uint8(name):
    image = photos.load_photo(name)
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert min(image.shape[:2]) >= 224
    info = photos.photo_info(name)
    assert info.licence and info.package
    if info.grayscale:
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_unknown_photo_names_the_choices():
    with pytest.raises(ValueError, match="'coffee'"):
        photos.load_photo("nope")


def test_importing_mbv2_imports_neither_torchvision_nor_the_photo_packages():
    code = (
        "import sys, mbv2, mbv2.pretrained, mbv2.photos; "
        "print(sorted(m for m in ('torchvision', 'skimage', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_top_k_kept_counts_the_shared_classes_whatever_their_order():
    reference = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    other = torch.tensor([[4.0, 5.0, 0.0, 0.0, 3.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    # Row 0: top-3 {0, 1, 2} against {1, 0, 4}: 2 shared. Row 1: {4, 3, 2} against {0, 1, 2}: 1.
    assert pretrained.top_k_kept(reference, other, k=3).tolist() == [2, 1]
    assert pretrained.top_k_kept(reference, other.softmax(dim=1), k=3).tolist() == [2, 1]
    assert pretrained.top_k_kept(reference, reference, k=5).tolist() == [5, 5]
    with pytest.raises(ValueError, match="k must be at most"):
        pretrained.top_k_kept(reference, other, k=6)
    with pytest.raises(ValueError, match="same shape"):
        pretrained.top_k_kept(reference, other[:1], k=2)
    with pytest.raises(ValueError, match="other must be an"):
        pretrained.top_k_kept(reference, other[0], k=2)
