"""flowssl pretraining: FlowE, cross-pixel flow similarity and their baselines from video."""

__version__ = "0.1.0"
