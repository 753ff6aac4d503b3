_base_ = ["./deeplabv1_flowssl-r50-frozen_4xb4-20k_voc12aug-512x512.py"]
# heavy readout (mIoU†): mmseg's DeepLabV3 ASPP decoder instead of the single 1×1 conv
model = dict(decode_head=dict(type="ASPPHead", channels=512, dilations=(1, 12, 24, 36), dropout_ratio=0.1,
                              norm_cfg=dict(type="BN", requires_grad=True)))
