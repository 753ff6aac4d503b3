# FlowE Table 6, 10 % of the Cityscapes training labels (UrbanCity stand-in; see the 1pct config).
_base_ = ["./deeplabv1_flowssl-r50-finetune_4xb2-40k_cityscapes-1pct-512x1024.py"]
train_dataloader = dict(dataset=dict(fraction=0.1))
