# FlowE Table 6 (limited labels): the fine-tuned standard header (DeepLab v1's one 1×1 conv, every backbone
# parameter trained) on 1 % of the training labels. Table 6 is on UrbanCity, which is not public; BDD100K
# stands in (the driving video FlowE also pretrains on, with UrbanCity's readout protocol: 60k iterations,
# batch 16, lr 0.02, poly — the schedule is kept at every fraction, as the paper gives no other).
# LabelFractionDataset keeps a deterministic subset by seed (1 % ⊂ 10 % ⊂ 100 % for one seed) and
# LabelSubsetHook lists its files in WORK_DIR/label_subset.txt; the validation set is always complete.
_base_ = ["./deeplabv1_flowssl-r50-finetune_8xb2-60k_bdd100k-512x1024.py"]
train_dataloader = dict(dataset=dict(_delete_=True, type="LabelFractionDataset", fraction=0.01, seed=0,
                                     dataset={{_base_.train_dataloader.dataset}}))
custom_hooks = [dict(type="LabelSubsetHook")]
