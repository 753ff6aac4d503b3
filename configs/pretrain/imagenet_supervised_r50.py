# FlowE Table 2/3 "Supervised ImageNet": torchvision's ResNet-50 (IMAGENET1K_V1, the file FlowE used)
# wrapped into a flowssl checkpoint. Offline, pass model.checkpoint=/path/to/resnet50-0676ba61.pth.
_base_ = ["./rand_init_r50.py"]

model = dict(type="imagenet_supervised", weights="IMAGENET1K_V1", checkpoint=None)
