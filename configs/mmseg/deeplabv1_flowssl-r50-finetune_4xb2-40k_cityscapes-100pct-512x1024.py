# FlowE Table 6, all Cityscapes training labels (UrbanCity stand-in; see the 1pct config): the fine-tune
# config, run through the same wrapper so that its row also lists its training files.
_base_ = ["./deeplabv1_flowssl-r50-finetune_4xb2-40k_cityscapes-1pct-512x1024.py"]
train_dataloader = dict(dataset=dict(fraction=1.0))
