"""``flowssl show``: pictures a person checks — flow, dense embeddings, readout predictions."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pretrain.data.augment import IMAGENET_MEAN, IMAGENET_STD
from pretrain.data.frames import load_rgb
from pretrain.fileio import load_checkpoint
from pretrain.models import ResNetEncoder


def _read(path: str | Path) -> torch.Tensor:
    if not Path(path).is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    return load_rgb(Path(path))  # truncated, corrupt or absurdly large: one line naming the file


def project_to_rgb(features: torch.Tensor, method: str = "pca", seed: int = 0) -> torch.Tensor:
    """[C,H,W] features → [3,H,W] in [0,1] by PCA (top 3 components) or a random projection, as
    the cross-pixel paper's Fig. 4 shows embeddings."""
    c, h, w = features.shape
    x = features.reshape(c, -1).T.double()
    x = x - x.mean(0)
    if method == "pca":
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        proj = x @ v[:3].T
    elif method == "random":
        g = torch.Generator().manual_seed(seed)
        proj = x @ torch.randn(c, 3, generator=g, dtype=x.dtype)
    else:
        raise ValueError(f"projection must be 'pca' or 'random', got '{method}'")
    lo, hi = proj.quantile(0.01, 0), proj.quantile(0.99, 0)
    proj = ((proj - lo) / (hi - lo).clamp(min=1e-8)).clamp(0, 1)
    return proj.T.reshape(3, h, w).float()


def show_embeddings(checkpoint: str | Path, image: str | Path, out: str | Path, method: str = "pca",
                    stage: str = "layer4") -> Path:
    """The encoder's ``stage`` features of one image, projected to RGB and upsampled beside it."""
    ckpt = load_checkpoint(checkpoint)
    if "encoder" not in ckpt or "meta" not in ckpt:
        raise ValueError(f"{checkpoint} is not a flowssl checkpoint (no 'encoder'/'meta')")
    meta = ckpt["meta"]
    enc = ResNetEncoder(meta.get("arch", "resnet50"), meta.get("output_stride", 8))
    enc.load_state_dict(ckpt["encoder"])
    enc.eval()
    img = _read(image)
    x = (img - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        feats = enc.forward_stages(x[None])[stage][0]
    rgb = F.interpolate(project_to_rgb(feats, method)[None], size=img.shape[-2:], mode="nearest")[0]
    pic = torch.cat([img, rgb], dim=2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), (pic.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8))
    return out


def show_predictions(config: str | Path, readout_checkpoint: str | Path, image: str | Path, out: str | Path,
                     alpha: float = 0.5) -> Path:
    """An mmseg readout's prediction coloured with the dataset palette over the image (FlowE Fig. 5)."""
    from mmseg.apis import inference_model, init_model

    import mmseg_plugin  # noqa: F401  (registers the backbone and head)

    if not Path(readout_checkpoint).is_file():
        raise FileNotFoundError(f"readout checkpoint {readout_checkpoint} does not exist")
    model = init_model(str(config), str(readout_checkpoint), device="cpu")
    rgb = _read(image)  # checked like every frame (truncation, header size) before mmseg sees it
    bgr = np.ascontiguousarray((rgb.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8))
    pred = inference_model(model, bgr).pred_sem_seg.data[0].cpu().numpy()
    palette = np.array(model.dataset_meta["palette"], dtype=np.uint8)
    colour = palette[pred % len(palette)][:, :, ::-1]
    blend = (bgr * (1 - alpha) + colour * alpha).astype(np.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.concatenate([bgr, blend], 1))
    return out
