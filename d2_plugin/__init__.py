"""detectron2 adapters for flowssl encoders.

``import d2_plugin.modeling`` registers the backbones (``build_flowssl_resnet_backbone`` for C4,
``build_flowssl_resnet_fpn_backbone``) and ``FlowsslRes5ROIHeads``; ``d2_plugin.config`` adds the
``MODEL.FLOWSSL`` node; ``d2_plugin.datasets`` registers BDD100K detection, Cityscapes instances,
and the synthetic video. The config and dataset-conversion parts import without detectron2.
"""
