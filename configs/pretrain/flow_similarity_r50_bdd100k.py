# Cross-pixel optical-flow similarity (Mahendran et al. 2018) with a ResNet-50 OS8 encoder:
# hypercolumns from every stage, D = 16, 512 sampled pixels per image, M = 56 (eq. 6), σ learned.
_base_ = ["./_base_/sparse_flow_r50_bdd100k.py"]

model = dict(type="flow_similarity", encoder=dict(arch="resnet50", output_stride=8), embedding_dim=16,
             num_points=512, max_flow=56.0, sigma2=0.01,
             head=dict(stages=("stem", "layer1", "layer2", "layer3", "layer4"), hidden_channels=256))
