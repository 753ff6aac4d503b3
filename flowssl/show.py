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


def pca_basis(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, top-3 components, low, high) of ``samples`` [N, C]: one basis and one colour range, so
    pictures projected with it can be compared (the same colour means the same direction)."""
    x = samples.double()
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    proj = (x - mean) @ v[:3].T
    return mean, v[:3], proj.quantile(0.01, 0), proj.quantile(0.99, 0)


def project_with(features: torch.Tensor, basis: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """[C,H,W] features → [3,H,W] in [0,1] through a :func:`pca_basis`."""
    c, h, w = features.shape
    mean, comps, lo, hi = basis
    proj = (features.reshape(c, -1).T.double() - mean) @ comps.T
    proj = ((proj - lo) / (hi - lo).clamp(min=1e-8)).clamp(0, 1)
    return proj.T.reshape(3, h, w).float()


def project_to_rgb(features: torch.Tensor, method: str = "pca", seed: int = 0) -> torch.Tensor:
    """[C,H,W] features → [3,H,W] in [0,1] by PCA (top 3 components) or a random projection, as
    the cross-pixel paper's Fig. 4 shows embeddings (a basis of this image alone)."""
    c, h, w = features.shape
    x = features.reshape(c, -1).T.double()
    if method == "pca":
        return project_with(features, pca_basis(x))
    if method != "random":
        raise ValueError(f"projection must be 'pca' or 'random', got '{method}'")
    x = x - x.mean(0)
    g = torch.Generator().manual_seed(seed)
    proj = x @ torch.randn(c, 3, generator=g, dtype=x.dtype)
    lo, hi = proj.quantile(0.01, 0), proj.quantile(0.99, 0)
    proj = ((proj - lo) / (hi - lo).clamp(min=1e-8)).clamp(0, 1)
    return proj.T.reshape(3, h, w).float()


def compare_embeddings(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Several checkpoints' [C,H,W] features of one frame → RGB pictures in ONE PCA basis fitted on
    all of them together (per-channel standardised), so a colour means the same direction in every
    picture; a basis per picture would make no two of them comparable."""
    shapes = {tuple(f.shape) for f in features.values()}
    if len(shapes) != 1:
        raise ValueError(f"features to compare must have one shape (same encoder), got {sorted(shapes)}")

    def standardised(f: torch.Tensor) -> torch.Tensor:
        x = f.reshape(f.shape[0], -1).T.double()
        return (x - x.mean(0)) / x.std(0).clamp(min=1e-8)

    flat = {name: standardised(f) for name, f in features.items()}
    basis = pca_basis(torch.cat(list(flat.values())))
    c, h, w = next(iter(features.values())).shape
    return {name: project_with(x.T.reshape(c, h, w), basis) for name, x in flat.items()}


def label_colours(labels: torch.Tensor, palette: tuple[tuple[int, int, int], ...]) -> torch.Tensor:
    """[H,W] class ids → [3,H,W] RGB in [0,1] (255 and unknown ids black)."""
    table = torch.zeros(256, 3)
    table[: len(palette)] = torch.tensor(palette, dtype=torch.float32) / 255
    return table[labels.long().clamp(0, 255)].permute(2, 0, 1)


def write_panel(tiles: dict[str, torch.Tensor], out: str | Path, columns: int = 0) -> Path:
    """Tiles ([3,H,W] in [0,1], one size) side by side (``columns`` per row, 0 = one row), each named
    in its corner, written atomically as a PNG."""
    from pretrain.fileio import atomic_path

    names, pics = list(tiles), [t.clamp(0, 1) for t in tiles.values()]
    columns = columns or len(pics)
    blank = torch.ones_like(pics[0])
    rows = [torch.cat((pics + [blank] * columns)[i:i + columns], dim=2) for i in range(0, len(pics), columns)]
    grid = (torch.cat(rows, dim=1).permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8).copy()
    h, w = pics[0].shape[1:]
    for i, name in enumerate(names):
        y, x = (i // columns) * h, (i % columns) * w
        cv2.putText(grid, name, (x + 3, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(grid, name, (x + 3, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        ok, data = cv2.imencode(".png", grid)
        if not ok:
            raise ValueError(f"could not encode the picture {out}")
        tmp.write_bytes(data.tobytes())
    return out


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
