"""``flowssl flow precompute`` and ``flowssl flow show``."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import torch
from torchvision.utils import flow_to_image
from tqdm import tqdm

from pretrain.data.frames import try_read_rgb
from pretrain.fileio import write_text_atomic
from pretrain.flow.io import KITTI_SCALE, positive_scale, write_flow_png
from pretrain.flow.sources import CACHE_KEY_FORMAT, FlowSource, read_cache_info
from pretrain.flow.warp import warp


def precompute_cache(pairs: list[tuple[Path, Path]], keys: list[str], out: Path, source: FlowSource,
                     scale: float = KITTI_SCALE, device: str = "cpu") -> dict[str, int]:
    """Fill ``out`` with ``{key}_fw.png``/``{key}_bw.png`` for every pair; pairs already done are
    skipped, so an interrupted run resumes where it stopped. Returns counts.

    Each PNG's third channel holds the forward–backward consistency mask of its direction (the
    source's α₁, α₂, recorded in ``flow_cache.json``), so training reads it instead of recomputing
    the check at full frame size in every worker. A cache begun without masks stays without."""
    if not positive_scale(scale):
        raise ValueError(f"--scale must be a positive finite number (1/scale px precision), got {scale}")
    out.mkdir(parents=True, exist_ok=True)
    meta = out / "flow_cache.json"
    info = {"scale": scale, "source": type(source).__name__, "format": "16-bit PNG, (I - 2^15)/scale, valid=ch3",
            "key_format": CACHE_KEY_FORMAT,
            "valid": {"kind": "forward-backward consistency", "alpha1": source.alpha1, "alpha2": source.alpha2}}
    if meta.exists():
        old = read_cache_info(out)  # a corrupt or hand-edited one is refused, naming the file
        if old["scale"] != scale:
            raise ValueError(f"{out} was filled with scale {old['scale']} ({meta}); use another --out or "
                             f"--scale {old['scale']}")
        if old["key_format"] != CACHE_KEY_FORMAT:  # its keys are this format's unless a stem needs escaping
            ambiguous = [k for k in keys if "%" in k.rsplit("/", 1)[-1]]
            if ambiguous:
                raise ValueError(f"{out} was filled by a flowssl whose keys were ambiguous for frame names with '__', "
                                 f"'%' or a leading/trailing '_' (pair {ambiguous[0]}: two pairs could share one "
                                 "flow); use a new --out")
        if old.get("valid") != info["valid"]:  # pairs already written hold no masks, or other α: say none
            info.pop("valid")
    write_text_atomic(json.dumps(info, indent=2), meta)
    counts = {"done": 0, "skipped": 0, "unreadable": 0}
    source = source.to(device)
    for (a, b), key in tqdm(list(zip(pairs, keys, strict=True)), desc="flow precompute", dynamic_ncols=True):
        fw_path, bw_path = out / f"{key}_fw.png", out / f"{key}_bw.png"
        if fw_path.is_file() and bw_path.is_file():
            counts["skipped"] += 1
            continue
        (img1, why1), (img2, why2) = try_read_rgb(a), try_read_rgb(b)
        if img1 is None or img2 is None:
            counts["unreadable"] += 1
            bad, why = (a, why1) if img1 is None else (b, why2)
            tqdm.write(f"skipping pair {a.name} / {b.name}: {bad} cannot be used: {why}")
            continue
        pair = source(img1[None].to(device), img2[None].to(device), {"keys": [key]})
        write_flow_png(fw_path, pair.fw[0].cpu(), pair.valid_fw[0].cpu(), scale=scale)
        write_flow_png(bw_path, pair.bw[0].cpu(), pair.valid_bw[0].cpu(), scale=scale)
        counts["done"] += 1
    return counts


def _save_rgb(path: Path, img: torch.Tensor) -> None:
    """[3,H,W] float in [0,1] or uint8 → PNG."""
    if img.dtype != torch.uint8:
        img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    cv2.imwrite(str(path), img.permute(1, 2, 0).cpu().numpy()[:, :, ::-1])


def show_pair(img1: torch.Tensor, img2: torch.Tensor, source: FlowSource, out: Path) -> list[Path]:
    """PNGs a person checks flow with: the frames, forward/backward flow (Middlebury colours via
    torchvision's ``flow_to_image``), the occlusion mask, the frame-2-warped-to-frame-1 image and its
    error next to the unwarped error."""
    out.mkdir(parents=True, exist_ok=True)
    pair = source(img1[None], img2[None])
    warped, inside = warp(img2[None], pair.fw)
    valid = (pair.valid_fw & inside)[0]
    err = (warped[0] - img1).abs().mean(0) * valid
    raw = (img2 - img1).abs().mean(0)
    scale = max(float(raw.max()), 1e-6)
    files = {
        "frame1.png": img1, "frame2.png": img2,
        "flow_fw.png": flow_to_image(pair.fw[0]), "flow_bw.png": flow_to_image(pair.bw[0]),
        "occlusion.png": (~valid).float().expand(3, -1, -1),
        "warped2to1.png": warped[0],
        "error_warped.png": (err / scale).expand(3, -1, -1), "error_unwarped.png": (raw / scale).expand(3, -1, -1),
    }
    paths = []
    for name, img in files.items():
        _save_rgb(out / name, img)
        paths.append(out / name)
    stats = {"valid_fraction": float(valid.float().mean()),
             "mean_abs_error_warped": float(err[valid].mean()) if valid.any() else float("nan"),
             "mean_abs_error_unwarped": float(raw[valid].mean()) if valid.any() else float("nan"),
             "max_flow_px": float(pair.fw.norm(dim=1).max())}
    write_text_atomic(json.dumps(stats, indent=2), out / "stats.json")
    return [*paths, out / "stats.json"]


__all__ = ["precompute_cache", "show_pair"]
