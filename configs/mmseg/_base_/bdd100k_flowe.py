# BDD100K semantic segmentation, FlowE Table 1 protocol: random resize of the shorter side to
# 512-2048, 512×1024 crops (mmseg's BDD100KDataset layout: images/10k, labels/sem_seg/masks).
_base_ = ["mmseg::_base_/datasets/bdd100k.py"]

crop_size = (512, 1024)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomChoiceResize", scales=[512 + 64 * i for i in range(25)], resize_type="ResizeShortestEdge",
         max_size=8192),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
