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
    _, load = PHOTOS[one_of("name", name, tuple(PHOTOS))]
    image = np.asarray(load())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.dtype != np.uint8:
        raise RuntimeError(f"photo {name!r} loaded as {image.dtype}, expected uint8")
    return np.ascontiguousarray(image[..., :3])
