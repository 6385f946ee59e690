"""Real photographs with clean licences, from packages the book installs (nothing downloaded).

Each photograph is returned as an ``(H, W, 3)`` uint8 RGB array, the format that
:func:`mbv2.pretrained.preprocess` takes. The packages are imported only when a
photograph is loaded, so ``import mbv2`` still needs only torch and numpy.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ._checks import one_of


class Photo(NamedTuple):
    """Where a photograph comes from and under which terms."""

    package: str  #: the Python package that ships the file
    subject: str  #: what it shows, in a few words
    licence: str  #: the terms, as the package's documentation gives them
    grayscale: bool  #: True if the original has one channel (returned repeated to RGB)


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image[0] if isinstance(image, tuple) else image  # stereo pairs: the left image

    return load


def _sklearn(file: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(file)

    return load


def _matplotlib(file: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib.cbook
        import matplotlib.image

        with matplotlib.cbook.get_sample_data(file) as handle:
            return matplotlib.image.imread(handle, format=file.rsplit(".", 1)[-1])

    return load


_PD, _CC0 = "public domain", "CC0"
_CC_BY = "CC BY 2.0 (Flickr; see sklearn/datasets/images/README.txt)"
#: name -> (description, loader)
PHOTOS: dict[str, tuple[Photo, Callable[[], np.ndarray]]] = {
    "coffee": (Photo("scikit-image", "a cup of coffee", _CC0, False), _skimage("coffee")),
    "chelsea": (Photo("scikit-image", "a tabby cat", _CC0, False), _skimage("chelsea")),
    "astronaut": (Photo("scikit-image", "astronaut Eileen Collins", _PD, False), _skimage("astronaut")),
    "rocket": (Photo("scikit-image", "a rocket on its launch pad", _PD, False), _skimage("rocket")),
    "camera": (Photo("scikit-image", "a man with a camera on a tripod", _CC0, True), _skimage("camera")),
    "motorcycle": (
        Photo("scikit-image", "a motorcycle (Middlebury stereo, left view)",
              "Middlebury 2014 stereo data set", False),
        _skimage("stereo_motorcycle"),
    ),
    "hubble": (Photo("scikit-image", "the Hubble deep field", _PD, False), _skimage("hubble_deep_field")),
    "coins": (Photo("scikit-image", "Greek coins from Pompeii", "no known copyright restrictions", True),
              _skimage("coins")),
    "clock": (Photo("scikit-image", "a wall clock", _PD, True), _skimage("clock")),
    "china": (Photo("scikit-learn", "a temple in China", _CC_BY, False), _sklearn("china.jpg")),
    "flower": (Photo("scikit-learn", "a flower", _CC_BY, False), _sklearn("flower.jpg")),
    "grace_hopper": (Photo("matplotlib", "Rear Admiral Grace Hopper in uniform", "public domain (U.S. Navy)",
                           False), _matplotlib("grace_hopper.jpg")),
}


def photo_names() -> list[str]:
    """The names :func:`load_photo` knows."""
    return list(PHOTOS)


def photo_info(name: str) -> Photo:
    """The package, subject and licence of a photograph."""
    return PHOTOS[one_of("name", name, tuple(PHOTOS))][0]


def load_photo(name: str) -> np.ndarray:
    """The photograph ``name`` as an ``(H, W, 3)`` uint8 RGB array.

    Grayscale originals (``photo_info(name).grayscale``) come back with the one channel
    repeated three times, since the network takes RGB.
    """
    return _load(PHOTOS, name, "photo")


def _load(registry: dict, name: str, what: str) -> np.ndarray:
    _, load = registry[one_of("name", name, tuple(registry))]
    image = np.asarray(load())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.dtype != np.uint8:
        raise RuntimeError(f"{what} {name!r} loaded as {image.dtype}, expected uint8")
    return np.ascontiguousarray(image[..., :3])


# --- Calibration photographs ------------------------------------------------------------
#
# A second, separate group: photographs that int8 quantization may *calibrate* on (choose
# its activation ranges from), so that the photographs it is *evaluated* on, the twelve
# above, play no part in choosing the ranges. They are the offline scikit-image images
# that are not among the twelve and whose documentation states their terms: textures,
# microscopy, a retina and a scanned text. They show surfaces and structures rather than
# ImageNet's objects, which makes calibrating on them a cautious choice: ranges from them
# are not tuned to the evaluation photographs.

_CC0_TEXTURE = "CC0 (see the function's docstring in skimage.data)"
#: name -> (description, loader); deliberately disjoint from :data:`PHOTOS`.
CALIBRATION_PHOTOS: dict[str, tuple[Photo, Callable[[], np.ndarray]]] = {
    "brick": (Photo("scikit-image", "a brick wall", _CC0_TEXTURE, True), _skimage("brick")),
    "grass": (Photo("scikit-image", "grass", _CC0_TEXTURE, True), _skimage("grass")),
    "gravel": (Photo("scikit-image", "gravel", _CC0_TEXTURE, True), _skimage("gravel")),
    "cell": (Photo("scikit-image", "a cell floating in saline (quantitative phase image)", _CC0, True),
             _skimage("cell")),
    "retina": (Photo("scikit-image", "a fundus photograph of a human retina", "CC0 1.0 (Wikimedia Commons)",
                     False), _skimage("retina")),
    "immunohistochemistry": (
        Photo("scikit-image", "stained colonic glands under a microscope", "no known copyright restrictions",
              False),
        _skimage("immunohistochemistry"),
    ),
    "text": (Photo("scikit-image", "printed text on a curved page", _PD, True), _skimage("text")),
}


def calibration_photo_names() -> list[str]:
    """The names :func:`load_calibration_photo` knows; none of them is in :func:`photo_names`."""
    return list(CALIBRATION_PHOTOS)


def calibration_photo_info(name: str) -> Photo:
    """The package, subject and licence of a calibration photograph."""
    return CALIBRATION_PHOTOS[one_of("name", name, tuple(CALIBRATION_PHOTOS))][0]


def load_calibration_photo(name: str) -> np.ndarray:
    """The calibration photograph ``name`` as an ``(H, W, 3)`` uint8 RGB array (grayscale
    originals with the channel repeated, as :func:`load_photo` does)."""
    return _load(CALIBRATION_PHOTOS, name, "calibration photo")


# --- Crops ---------------------------------------------------------------------------------


class View(NamedTuple):
    """A square crop of a photograph: its side as a fraction of the shorter side, and where."""

    scale: float  #: side of the square / the photograph's shorter side, in (0, 1]
    position: str  #: one of :data:`POSITIONS`


#: Where a :class:`View` may sit.
POSITIONS = ("centre", "top left", "top right", "bottom left", "bottom right")

#: The default views: the centre at 0.875 of the shorter side (what torchvision's
#: evaluation crop keeps: 224 of 256) and the four corners at 0.65.
VIEWS: tuple[View, ...] = (View(0.875, "centre"),) + tuple(View(0.65, p) for p in POSITIONS[1:])


def crop_box(height: int, width: int, view: View) -> tuple[int, int, int]:
    """``(top, left, side)`` of ``view``'s square in a ``height`` x ``width`` photograph."""
    from ._checks import positive_int, real_at_least

    height, width = positive_int("height", height), positive_int("width", width)
    if not isinstance(view, tuple) or len(view) != 2:
        raise TypeError(f"view must be a View(scale, position), got {view!r}")
    scale = real_at_least("view.scale", view[0], 0.0, strict=True)
    if scale > 1:
        raise ValueError(f"view.scale must be in (0, 1], got {scale!r}")
    position = one_of("view.position", view[1], POSITIONS)
    side = max(1, round(scale * min(height, width)))
    if position == "centre":
        return (height - side) // 2, (width - side) // 2, side
    vertical, horizontal = position.split()
    top = 0 if vertical == "top" else height - side
    left = 0 if horizontal == "left" else width - side
    return top, left, side


def crops(image: np.ndarray, views: tuple[View, ...] = VIEWS, *, size: int = 224,
          flips: bool = True) -> list[np.ndarray]:
    """Square crops of ``image`` resized to ``size`` x ``size``, as uint8 RGB arrays.

    One crop per view, in the order of ``views``, then (if ``flips``) the same crops
    mirrored left to right: ``2 * len(views)`` crops. Resizing is bilinear with
    antialiasing (Pillow's), as torchvision's preprocessing does.
    """
    from PIL import Image

    from ._checks import positive_int

    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        described = f"shape {image.shape}, dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got {described}")
    size = positive_int("size", size)
    if not isinstance(flips, bool):
        raise TypeError(f"flips must be True or False, got {flips!r}")
    if isinstance(views, View) or not isinstance(views, (tuple, list)) or not views:
        raise ValueError(f"views must be a non-empty sequence of View(scale, position), got {views!r}")
    height, width = image.shape[:2]
    out = []
    for view in views:
        top, left, side = crop_box(height, width, view)
        square = Image.fromarray(image[top:top + side, left:left + side])
        out.append(np.asarray(square.resize((size, size), Image.BILINEAR)))
    if flips:
        out += [np.ascontiguousarray(c[:, ::-1]) for c in out]
    return out
