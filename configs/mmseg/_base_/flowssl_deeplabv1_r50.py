# DeepLab v1 standard readout (FlowE §4.2): the flowssl encoder (OS8, dilated) + one 1×1 conv.
custom_imports = dict(imports=["mmseg_plugin"], allow_failed_imports=False)
# The pretraining normalisation (ImageNet mean/std, RGB), on mmseg's 0-255 scale.
data_preprocessor = dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                         bgr_to_rgb=True, pad_val=0, seg_pad_val=255)
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    backbone=dict(type="FlowsslResNet", arch="resnet50", output_stride=8, frozen=True, checkpoint=None,
                  norm_cfg=norm_cfg),
    decode_head=dict(type="DeepLabV1Head", in_channels=2048, in_index=3, num_classes=19, dropout_ratio=0.0,
                     align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
