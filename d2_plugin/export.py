"""What ``flowssl convert --to detectron2`` adds for detectron2 (without importing it): the
``MODEL.FLOWSSL``/pixel hints stored in the sidecar (read back by :func:`d2_plugin.config.checkpoint_hints`)
and the YAML fragment for detectron2's *stock* ResNet configs. The weights themselves are converted by
the library (:func:`pretrain.convert.convert`), which knows no framework's config keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain.convert import SAFE_NAME, Encoder
from pretrain.convert import convert as _convert
from pretrain.fileio import CheckpointError
from pretrain.readout import ARCH_DEPTH, IMAGENET_MEAN, IMAGENET_STD


def d2_config_hints(enc: Encoder) -> dict[str, Any]:
    """What a detectron2 config needs to read this encoder as it was trained (RGB, 0–255 scale)."""
    os_ = int(enc.meta.get("output_stride", 32))
    return {
        "MODEL.PIXEL_MEAN": [round(m * 255, 3) for m in enc.meta.get("pixel_mean", IMAGENET_MEAN)],
        "MODEL.PIXEL_STD": [round(s * 255, 3) for s in enc.meta.get("pixel_std", IMAGENET_STD)],
        "INPUT.FORMAT": "RGB",
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
        "MODEL.RESNETS.DEPTH": ARCH_DEPTH.get(enc.arch, enc.arch),
        "MODEL.FLOWSSL.PRETRAIN_OUTPUT_STRIDE": os_,
        "MODEL.FLOWSSL.RES4_DILATION": 2 if os_ == 8 else 1,
        "MODEL.FLOWSSL.RES5_DILATION": {8: 4, 16: 2}.get(os_, 1),
    }


# the depths detectron2's own ResNet builds that flowssl pretrains, with a model-zoo C4 config of that depth
STOCK_D2_DEPTHS = {arch: (ARCH_DEPTH[arch], zoo) for arch, zoo in (("resnet50", "faster_rcnn_R_50_C4_1x.yaml"),
                                                                   ("resnet101", "faster_rcnn_R_101_C4_3x.yaml"))}


def d2_stock_fragment(enc: Encoder, weights: Path) -> str | None:
    """A YAML fragment that makes detectron2's *stock* ResNet configs (model zoo, ``tools/train_net.py``)
    read these weights as they were trained; None where the stock ResNet has no such depth.

    A stock config otherwise loads the converted file without a warning but computes different
    features: ``STRIDE_IN_1X1=True`` (MSRA's stride in the 1x1 conv, torchvision strides the 3x3),
    BGR input and MSRA's pixel statistics (std 1).

    detectron2 merges YAML with ``yaml.unsafe_load`` when ``safe_load`` refuses a tag, so nothing read
    from a checkpoint is written as text: the body is ``yaml.safe_dump`` of checked values (method and
    arch names are :data:`SAFE_NAME`, numbers are numbers), and the comments are fixed text."""
    import yaml

    if enc.arch not in STOCK_D2_DEPTHS:
        return None
    hints = d2_config_hints(enc)
    os_ = hints["MODEL.FLOWSSL.PRETRAIN_OUTPUT_STRIDE"]
    depth, zoo = STOCK_D2_DEPTHS[enc.arch]
    method = enc.meta.get("method", "unknown")
    if not SAFE_NAME.fullmatch(str(method)):  # read_encoder checks; a hand-made Encoder is checked here
        raise CheckpointError(f"method name {method!r} is not a plain name ({SAFE_NAME.pattern})")
    lines = [
        f"# detectron2 config fragment written by `flowssl convert` ({method}, {enc.arch}, pretraining output "
        f"stride {os_}).",
        "# It makes a stock detectron2 ResNet config read the weights as they were trained: torchvision's",
        "# bottleneck (stride in the 3x3 conv), RGB input, ImageNet statistics on the 0-255 scale. Without it",
        "# a stock config loads the file silently but computes other features (STRIDE_IN_1X1, BGR, MSRA mean/std).",
        "# NORM FrozenBN: the weights carry BatchNorm statistics.",
        "# Use: set _BASE_ to the model-zoo config you train (uncomment the line below), then",
        "#   python <detectron2>/tools/train_net.py --config-file THIS.yaml --num-gpus 8 OUTPUT_DIR out",
    ]
    if os_ != 32:
        lines += [f"# Pretrained at output stride {os_} (dilated res4/res5): the stock ResNet runs these weights",
                  "# at its standard strides (RES5_DILATION only dilates a backbone res5, not the C4 ROI head's).",
                  "# flowssl's configs/d2 (MODEL.FLOWSSL.RES4_DILATION/RES5_DILATION) keep the pretraining layout."]
    lines.append(f'# _BASE_: "<detectron2>/configs/COCO-Detection/{zoo}"')
    body = {
        "MODEL": {
            "WEIGHTS": str(weights.resolve()),
            "PIXEL_MEAN": [float(v) for v in hints["MODEL.PIXEL_MEAN"]],
            "PIXEL_STD": [float(v) for v in hints["MODEL.PIXEL_STD"]],
            "RESNETS": {"DEPTH": depth, "STRIDE_IN_1X1": False, "NORM": "FrozenBN", "RES5_DILATION": 1},
        },
        "INPUT": {"FORMAT": "RGB"},
    }
    text = "\n".join(lines) + "\n" + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=1000)
    if yaml.safe_load(text) != body:  # what detectron2 merges must be exactly this data
        raise CheckpointError(f"the detectron2 fragment for {weights} does not read back as written")
    return text


def detectron2_files(enc: Encoder, out: Path) -> tuple[dict[str, Any], dict[Path, str]]:
    """The sidecar entries (``detectron2_config``, ``detectron2_yaml``) and the fragment file for ``out``."""
    fragment = d2_stock_fragment(enc, out)
    yaml_path = out.with_suffix(".yaml")
    sidecar = {"detectron2_config": d2_config_hints(enc), "detectron2_yaml": str(yaml_path) if fragment else None}
    return sidecar, ({yaml_path: fragment} if fragment is not None else {})


def convert(src: str | Path, target: str, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """:func:`pretrain.convert.convert` with detectron2's part for ``target='detectron2'`` (what the
    ``flowssl convert`` command and the bench run); any other target is passed through unchanged."""
    files = detectron2_files if target == "detectron2" else None
    return _convert(src, target, out, framework_files=files, **kwargs)


__all__ = ["STOCK_D2_DEPTHS", "convert", "d2_config_hints", "d2_stock_fragment", "detectron2_files"]
