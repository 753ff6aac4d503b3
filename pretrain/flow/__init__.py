"""Optical flow: one warp convention, occlusion, file formats and flow sources."""

from .io import read_flo, read_flow_png, read_kitti_flow, write_flo, write_flow_png, write_kitti_flow
from .sources import (
    FLOW_SOURCES,
    DISFlow,
    FlowPair,
    FlowSource,
    GroundTruthFlow,
    IdentityFlow,
    PrecomputedFlow,
    RAFTFlow,
    build_flow_source,
)
from .warp import forward_backward_occlusion, pixel_coords, sample_at, warp

__all__ = [
    "FLOW_SOURCES", "DISFlow", "FlowPair", "FlowSource", "GroundTruthFlow", "IdentityFlow", "PrecomputedFlow",
    "RAFTFlow", "build_flow_source", "forward_backward_occlusion", "pixel_coords", "read_flo", "read_flow_png",
    "read_kitti_flow", "sample_at", "warp", "write_flo", "write_flow_png", "write_kitti_flow",
]
