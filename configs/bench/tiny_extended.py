# The tiny benchmark (configs/bench/tiny.py) plus flow classification and S3 (affine), same world, encoder,
# budget and readouts. detectron2's C4 readout cannot build the narrow basic-block encoder; it stays in
# configs/bench/tiny_v2.py (ResNet-14, world v2).
_base_ = ["./tiny.py"]

methods = dict(
    flow_classification="configs/pretrain/flow_classification_r10n_v3_demo.py",
    s3_affine="configs/pretrain/s3_affine_r10n_v3_demo.py",
)
