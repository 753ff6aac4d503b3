# FlowE Table 6 protocol (limited labels): the standard header (DeepLab v1, one 1x1 conv) with the
# backbone fine-tuned, trained on 1 %, 10 % and 100 % of the training labels (a seeded subset; its file
# list is written beside each result), evaluated on the full val set. The paper's Table 6 is on
# UrbanCity, which is not public; Cityscapes stands in. Run on a cluster:
#   flowssl bench configs/bench/limited_labels_cityscapes.py --print-commands
methods = dict(
    rand_init="configs/pretrain/rand_init_r50.py",
    flowe="configs/pretrain/flowe_r50_frames.py",
)
checkpoints = dict()  # e.g. imagenet_supervised="resnet50-0676ba61.pth"
pretrain_options = dict()
seeds = [0, 1, 2]
synthetic = None
_finetune = "configs/mmseg/deeplabv1_flowssl-r50-finetune_4xb2-40k_cityscapes-512x1024.py"
readouts = [
    dict(name=f"limited_{pct}", framework="mmseg", dataset="cityscapes", config=_finetune, options={},
         label_fraction=pct / 100)
    for pct in (1, 10, 100)
]
