# FlowE Table 1 on BDD100K, one seed: pretrain each method (64 GPUs in the paper), then the four readouts.
# On a SLURM cluster: `flowssl bench configs/bench/paper_bdd100k.py --launcher slurm --partition P` (README,
# "Running the paper's tables on SLURM"); `--print-commands` lists the same steps as shell commands.
methods = dict(
    rand_init="configs/pretrain/rand_init_r50.py",
    byol="configs/pretrain/byol_r50_bdd100k.py",
    byol_crop="configs/pretrain/byol_crop_r50_bdd100k.py",
    byol_crop_video="configs/pretrain/byol_crop_video_r50_bdd100k.py",
    flowe="configs/pretrain/flowe_r50_bdd100k.py",
    flow_similarity="configs/pretrain/flow_similarity_r50_bdd100k.py",
)
checkpoints = dict()
pretrain_options = dict()
seeds = [0]
synthetic = None
# each pretraining job: 8 nodes × 8 GPUs (the paper's 64); readouts take their configs' GPU counts (8xb2 → 8)
slurm = dict(nodes=8, gpus_per_node=8)
readouts = [
    dict(name="deeplabv1", framework="mmseg", dataset="bdd100k",
         config="configs/mmseg/deeplabv1_flowssl-r50-frozen_8xb2-60k_bdd100k-512x1024.py", options={}),
    dict(name="deeplabv3", framework="mmseg", dataset="bdd100k",
         config="configs/mmseg/deeplabv3_flowssl-r50-frozen_8xb2-60k_bdd100k-512x1024.py", options={}),
    dict(name="c4", framework="d2", dataset="bdd100k",
         config="configs/d2/faster_rcnn_flowssl_R50_C4_bdd100k_frozen.yaml", options={}),
    dict(name="fpn", framework="d2", dataset="bdd100k",
         config="configs/d2/faster_rcnn_flowssl_R50_FPN_bdd100k_frozen.yaml", options={}),
]
