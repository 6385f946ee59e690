"""mbv2: MobileNetV2 (Sandler et al. 2018), as built and explained in the book.

Imports only torch and numpy. The names follow the paper: t, c, n, s for the rows of
Table 2; expansion, depthwise and projection for the three layers of a block.
"""

from . import (  # the modules, one concept each (imports of their heavier dependencies wait until used)
    benchmark, book, cost, data, deploy, detection, distributed, experiments, int8, loop, manifold, memory,
    metrics, mobilenet_v1, peak_memory, photos, pretrained, provenance, quantization, recipe, segmentation,
    speed, train,
)
from .layers import ConvBNAct, DepthwiseSeparableConv, InvertedResidual
from .model import (
    LAST_CHANNELS,
    OUTPUT_STRIDES,
    PAPER_TABLE_2,
    STEM_CHANNELS,
    STEM_STRIDE,
    MobileNetV2,
    StageSpec,
    Table2Row,
    atrous_schedule,
    make_divisible,
    table_2_rows,
    with_t1_expansion,
)
from .torchvision_compat import load_torchvision_weights, torchvision_difference, torchvision_key_map
from .tables import layer_summary, markdown_table, paper_shape
from .pretrained import load_pretrained
from .tracing import ShapeRecord, capture, run_with_hooks, trace_shapes

__all__ = [
    "ConvBNAct",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "LAST_CHANNELS",
    "MobileNetV2",
    "OUTPUT_STRIDES",
    "PAPER_TABLE_2",
    "STEM_CHANNELS",
    "STEM_STRIDE",
    "ShapeRecord",
    "StageSpec",
    "Table2Row",
    "atrous_schedule",
    "capture",
    "layer_summary",
    "load_pretrained",
    "load_torchvision_weights",
    "make_divisible",
    "markdown_table",
    "paper_shape",
    "run_with_hooks",
    "table_2_rows",
    "torchvision_difference",
    "torchvision_key_map",
    "trace_shapes",
    "with_t1_expansion",
]
__version__ = "0.1.0"

# `python -m mbv2.train` (or mbv2.benchmark) runs a module that importing the package has
# already imported; runpy then warns that the module runs twice. Their main() only calls
# into the package, so the warning is noise: hide it, for this package's modules only.
import warnings as _warnings

_warnings.filterwarnings("ignore", message=r"'mbv2\.[a-z0-9_]+' found in sys\.modules after import",
                         category=RuntimeWarning)
