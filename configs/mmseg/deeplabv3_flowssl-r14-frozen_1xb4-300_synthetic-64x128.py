_base_ = ["./deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py"]
# heavy readout (mIoU†): mmseg's DeepLabV3 ASPP decoder instead of the single 1×1 conv
model = dict(decode_head=dict(type="ASPPHead", channels=64, dilations=(1, 12, 24, 36), dropout_ratio=0.1,
                              norm_cfg=dict(type="BN", requires_grad=True)))
