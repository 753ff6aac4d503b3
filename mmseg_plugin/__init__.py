"""MMSegmentation adapters for flowssl encoders.

Import through ``custom_imports=dict(imports=['mmseg_plugin'], allow_failed_imports=False)``: it
registers ``FlowsslResNet`` (backbone), ``DeepLabV1Head`` (the standard readout),
``PerClassIoUMetric``, ``SyntheticCityscapesDataset``, and for limited labels (FlowE Table 6)
``LabelFractionDataset`` with its ``LabelSubsetHook``, and ``LabelIdCheckHook`` (label ids that do
not fit the classes name their file), in mmseg's registries. Thin subclasses and
wrappers; no mmseg code is copied.
"""

from . import checkpoint  # noqa: F401  (torch>=2.6 loader for mmengine checkpoints)
from .backbone import FlowsslResNet
from .datasets import SyntheticCityscapesDataset
from .head import DeepLabV1Head
from .label_fraction import LabelFractionDataset, LabelSubsetHook
from .labels import LabelIdCheckHook
from .metric import PerClassIoUMetric

__all__ = ["DeepLabV1Head", "FlowsslResNet", "LabelFractionDataset", "LabelIdCheckHook", "LabelSubsetHook",
           "PerClassIoUMetric", "SyntheticCityscapesDataset"]
