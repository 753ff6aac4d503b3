"""One Faster R-CNN C4 training step on random data, for ``benchmarks/readout_step.py``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def faster_rcnn_c4_step(frozen: bool, arch: str, size: tuple[int, int], device: torch.device) -> Callable[[], None]:
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    from . import modeling  # noqa: F401
    from .config import add_flowssl_config, merge_yaml_safely

    cfg = get_cfg()
    add_flowssl_config(cfg)
    merge_yaml_safely(cfg, REPO / "configs/d2/faster_rcnn_flowssl_R50_C4_bdd100k_frozen.yaml")
    cfg.MODEL.FLOWSSL.ARCH, cfg.MODEL.FLOWSSL.FROZEN = arch, frozen
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.DEVICE = str(device)
    model = build_model(cfg).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    h, w = size
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(2):
        inst = Instances((h, w))
        xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        inst.gt_boxes = Boxes(torch.cat([xy, xy + torch.tensor([w * 0.3, h * 0.3])], 1))
        inst.gt_classes = torch.randint(0, 8, (4,), generator=g)
        batch.append({"image": torch.randint(0, 255, (3, h, w), generator=g).float(), "instances": inst})

    from detectron2.utils.events import EventStorage

    storage = EventStorage(0)  # detectron2's losses log through an event storage

    def step() -> None:
        with storage:
            opt.zero_grad(set_to_none=True)
            sum(model(batch).values()).backward()
            opt.step()

    return step
