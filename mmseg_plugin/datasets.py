"""The synthetic video's Cityscapes-layout dataset (written by ``pretrain.data.write_cityscapes_layout``)."""

from __future__ import annotations

from typing import Any

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from pretrain.readout import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE


@DATASETS.register_module()
class SyntheticCityscapesDataset(BaseSegDataset):
    """Cityscapes file naming with flowssl's synthetic classes (background + five shapes)."""

    METAINFO = dict(classes=SYNTHETIC_CLASSES, palette=[list(c) for c in SYNTHETIC_PALETTE])

    def __init__(self, img_suffix: str = "_leftImg8bit.png", seg_map_suffix: str = "_gtFine_labelTrainIds.png",
                 **kwargs: Any) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)
