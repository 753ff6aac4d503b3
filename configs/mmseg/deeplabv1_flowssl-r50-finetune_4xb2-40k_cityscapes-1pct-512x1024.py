# FlowE Table 6 (limited labels): the fine-tuned standard header (DeepLab v1's one 1×1 conv, every backbone
# parameter trained) on 1 % of the training labels (30 of Cityscapes' 2975 fine images). Table 6 is on
# UrbanCity, which is not public; Cityscapes stands in, with its Table 3 readout schedule (40k iterations,
# batch 8, lr 0.01, poly — kept at every fraction, as the paper gives no other).
# LabelFractionDataset keeps a deterministic subset by seed (1 % ⊂ 10 % ⊂ 100 % for one seed) and
# LabelSubsetHook lists its files in WORK_DIR/label_subset.txt; the validation set is always complete.
_base_ = ["./deeplabv1_flowssl-r50-finetune_4xb2-40k_cityscapes-512x1024.py"]
train_dataloader = dict(dataset=dict(_delete_=True, type="LabelFractionDataset", fraction=0.01, seed=0,
                                     dataset={{_base_.train_dataloader.dataset}}))
custom_hooks = [dict(type="LabelSubsetHook")]
