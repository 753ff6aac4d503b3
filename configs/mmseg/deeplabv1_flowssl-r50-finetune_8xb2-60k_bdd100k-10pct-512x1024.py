# FlowE Table 6, 10 % of the BDD100K training labels (UrbanCity stand-in; see the 1pct config).
_base_ = ["./deeplabv1_flowssl-r50-finetune_8xb2-60k_bdd100k-1pct-512x1024.py"]
train_dataloader = dict(dataset=dict(fraction=0.1))
