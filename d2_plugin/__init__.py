"""detectron2 adapters for flowssl encoders.

``import d2_plugin.modeling`` registers the backbones (``build_flowssl_resnet_backbone`` for C4,
``build_flowssl_resnet_fpn_backbone``) and ``FlowsslRes5ROIHeads``; ``d2_plugin.config`` adds the
``MODEL.FLOWSSL`` node and ``DATASETS.LABEL_FRACTION``/``LABEL_SEED``; ``d2_plugin.datasets`` registers
BDD100K detection, Cityscapes instances (from gtFine instanceIds PNGs) and the synthetic video, and
re-registers detectron2's PASCAL VOC splits under the same data root. The config and dataset-parsing
parts import without detectron2.
"""
