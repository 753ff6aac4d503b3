"""MMSegmentation adapters for flowssl encoders.

Import through ``custom_imports=dict(imports=['mmseg_plugin'], allow_failed_imports=False)``: it
registers ``FlowsslResNet`` (backbone), ``DeepLabV1Head`` (the standard readout),
``PerClassIoUMetric``, ``SyntheticCityscapesDataset``, and for limited labels (FlowE Table 6)
``LabelFractionDataset`` with its ``LabelSubsetHook``, in mmseg's registries. Thin subclasses and
wrappers; no mmseg code is copied.
"""

from . import checkpoint  # noqa: F401  (torch>=2.6 loader for mmengine checkpoints)
from .backbone import FlowsslResNet
from .datasets import SyntheticCityscapesDataset
from .head import DeepLabV1Head
from .label_fraction import LabelFractionDataset, LabelSubsetHook
from .metric import PerClassIoUMetric

__all__ = ["DeepLabV1Head", "FlowsslResNet", "LabelFractionDataset", "LabelSubsetHook", "PerClassIoUMetric",
           "SyntheticCityscapesDataset"]
