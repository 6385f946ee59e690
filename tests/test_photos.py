"""The calibration photographs and the crops helper of mbv2.photos (the twelve object
photographs are tested with the trained network, in test_pretrained.py)."""

import numpy as np
import pytest

from mbv2 import photos

#: Other chapters iterate over these, in this order.
OBJECT_PHOTOS = ["coffee", "chelsea", "astronaut", "rocket", "camera", "motorcycle", "hubble", "coins", "clock",
                 "china", "flower", "grace_hopper"]


def test_the_object_photos_are_unchanged():
    assert photos.photo_names() == OBJECT_PHOTOS


def test_calibration_and_evaluation_photos_are_disjoint_by_name_and_by_content():
    evaluation, calibration = photos.photo_names(), photos.calibration_photo_names()
    assert not set(evaluation) & set(calibration)
    loaded = [photos.load_photo(name) for name in evaluation]
    for name in calibration:
        image = photos.load_calibration_photo(name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
        assert photos.calibration_photo_info(name).licence
        assert not any(other.shape == image.shape and np.array_equal(other, image) for other in loaded), name


def test_crops_cut_each_view_and_its_mirror_image():
    image = np.arange(60 * 80 * 3, dtype=np.uint8).reshape(60, 80, 3)
    assert photos.crop_box(60, 80, photos.View(0.5, "centre")) == (15, 25, 30)
    assert photos.crop_box(60, 80, photos.View(0.5, "bottom right")) == (30, 50, 30)
    cut = photos.crops(image, (photos.View(1.0, "top left"),), size=60)
    assert len(cut) == 2 and cut[0].shape == (60, 60, 3)
    np.testing.assert_array_equal(cut[0], image[:, :60])  # same size: no resampling
    np.testing.assert_array_equal(cut[1], cut[0][:, ::-1])
    assert len(photos.crops(image, size=32)) == 2 * len(photos.VIEWS)



@pytest.mark.parametrize("call, error, match", [
    (lambda: photos.load_calibration_photo("coffee"), ValueError, "name must be one of"),
    (lambda: photos.crops(np.zeros((8, 8), np.uint8)), ValueError, "image must be an"),
    (lambda: photos.crop_box(8, 8, photos.View(1.5, "centre")), ValueError, "view.scale must be in"),
    (lambda: photos.crop_box(8, 8, photos.View(0.5, "middle")), ValueError, "view.position must be one of"),
    (lambda: photos.crops(np.zeros((8, 8, 3), np.uint8), views=photos.View(0.5, "centre")), ValueError,
     "views must be a non-empty sequence"),
    (lambda: photos.crops(np.zeros((8, 8, 3), np.uint8), size=0), ValueError, "size must be an integer >= 1"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
