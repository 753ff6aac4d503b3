"""MMSegmentation adapters for flowssl encoders.

Import through ``custom_imports=dict(imports=['mmseg_plugin'], allow_failed_imports=False)``: it
registers ``FlowsslResNet`` (backbone), ``DeepLabV1Head`` (the standard readout),
``PerClassIoUMetric`` and ``SyntheticCityscapesDataset`` in mmseg's registries. Thin subclasses;
no mmseg code is copied.
"""

from . import checkpoint  # noqa: F401  (torch>=2.6 loader for mmengine checkpoints)
from .backbone import FlowsslResNet
from .datasets import SyntheticCityscapesDataset
from .head import DeepLabV1Head
from .metric import PerClassIoUMetric

__all__ = ["DeepLabV1Head", "FlowsslResNet", "PerClassIoUMetric", "SyntheticCityscapesDataset"]
