"""Where flow comes from, behind one interface: ``source(img1, img2, info) -> FlowPair``.

* ``dis`` — OpenCV's DIS optical flow: no weights, CPU, the offline default (runs in data workers);
* ``raft`` — torchvision's RAFT (large/small), frozen, from a local checkpoint or torchvision's cache
  (runs in the objective, on the training device, as Algorithm 1 does); fp32 by default;
* ``precomputed`` — a cache filled by ``flowssl flow precompute`` (16-bit PNGs, forward + backward);
* ``ground_truth`` — the synthetic video's exact flow.

Images are [B,3,H,W] RGB in [0,1]. Every source returns forward *and* backward flow so occlusion
can be found by forward–backward consistency (or is given exactly, for ground truth). Flow is fp32
whatever the autocast state of the caller (:mod:`pretrain.precision`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from mmengine.registry import Registry
from torch import nn

from ..fileio import safe_torch_load, torchvision_weights_file
from ..precision import fp32, fp32_geometry
from .io import FlowFileError, positive_scale, read_flow_png
from .warp import forward_backward_occlusion

FLOW_SOURCES = Registry("flow source")
# Flow-cache keys are "<frame folder relative to the data root>/<frame1>__<frame2>" with the frame
# stems escaped by :func:`escape_stem`. Format 1 joined the raw stems, so "x__y" + "z" and "x" +
# "y__z" shared a key; its keys are format 2's for every stem that needs no escaping, so such caches
# stay readable until a pair whose stems need escaping is looked up (then: an error).
CACHE_KEY_FORMAT = "relative-path/2"
OLD_KEY_FORMATS = ("relative-path/1",)


def escape_stem(stem: str) -> str:
    """``stem`` itself when it has no "__", no "%" and no leading or trailing "_" (nearly all frame
    names: old caches keep their keys), else percent-encoded ("%" → "%25", "_" → "%5F").

    Injective (escaped stems, and only they, contain "%"), and no result contains "__" or starts or
    ends with "_", so "<a>__<b>" splits back into (a, b) in exactly one way."""
    if "__" in stem or "%" in stem or stem.startswith("_") or stem.endswith("_"):
        return stem.replace("%", "%25").replace("_", "%5F")
    return stem


def flow_cache_key(folder: str, stem1: str, stem2: str) -> str:
    """The cache key of the pair (folder/stem1, folder/stem2): unique per pair (:func:`escape_stem`)."""
    return f"{folder}/{escape_stem(stem1)}__{escape_stem(stem2)}"


def read_cache_info(root: str | Path) -> dict[str, Any]:
    """``root/flow_cache.json``, checked; every error is one line naming the file and what to do.

    The scale must be positive and finite (a negative one silently flips every flow), the key
    format a known one, ``valid`` absent or a mapping."""
    meta = Path(root) / "flow_cache.json"
    redo = "restore it, or fill a new cache with 'flowssl flow precompute --out <new folder>'"
    try:
        info = json.loads(meta.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{meta} does not exist: fill the cache with 'flowssl flow precompute' first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowFileError(f"flow cache metadata {meta} cannot be read ({exc}); {redo}") from None
    except json.JSONDecodeError as exc:
        raise FlowFileError(f"flow cache metadata {meta} is not valid JSON ({exc}); {redo}") from None
    if not isinstance(info, dict):
        raise FlowFileError(f"flow cache metadata {meta} holds a {type(info).__name__}, not a JSON object; {redo}")
    key_format = info.get("key_format")
    if key_format != CACHE_KEY_FORMAT and key_format not in OLD_KEY_FORMATS:
        if key_format is None:
            raise FlowFileError(f"flow cache {meta.parent} was written by an older flowssl that keyed pairs by the "
                                "leaf folder name only (two sequences with the same leaf name shared one flow); "
                                "fill a new cache with 'flowssl flow precompute'")
        raise FlowFileError(f"flow cache metadata {meta}: unknown key_format {key_format!r} (this flowssl writes "
                            f"{CACHE_KEY_FORMAT!r}); {redo}")
    if not positive_scale(info.get("scale")):
        raise FlowFileError(f"flow cache metadata {meta}: 'scale' is {info.get('scale')!r}, not a positive finite "
                            f"number (the fixed-point scale its PNGs were written with); {redo}")
    if not isinstance(info.get("valid") or {}, dict):
        raise FlowFileError(f"flow cache metadata {meta}: 'valid' is {info['valid']!r}, not a JSON object; {redo}")
    return info


@dataclass
class FlowPair:
    """Forward/backward flow [B,2,H,W] and where each is trustworthy [B,H,W] (not occluded)."""

    fw: torch.Tensor
    bw: torch.Tensor
    valid_fw: torch.Tensor
    valid_bw: torch.Tensor

    @classmethod
    @fp32
    def from_consistency(cls, fw: torch.Tensor, bw: torch.Tensor, alpha1: float = 0.01,
                         alpha2: float = 0.5) -> FlowPair:
        """The pair with occlusion from forward–backward consistency, in fp32."""
        if not (torch.isfinite(fw).all() and torch.isfinite(bw).all()):
            raise ValueError("the flow source returned NaN/Inf flow; check the input frames")
        return cls(fw, bw, ~forward_backward_occlusion(fw, bw, alpha1, alpha2),
                   ~forward_backward_occlusion(bw, fw, alpha1, alpha2))


class FlowSource(nn.Module):
    """Base class. ``runs_in_data`` sources are called in dataset workers, others in the model."""

    runs_in_data = True
    needs_full_frames = False  # True: flow is looked up for whole frames, then scaled and cropped with them

    def __init__(self, alpha1: float = 0.01, alpha2: float = 0.5) -> None:
        super().__init__()
        self.alpha1, self.alpha2 = alpha1, alpha2

    def forward(self, img1: torch.Tensor, img2: torch.Tensor, info: dict[str, Any] | None = None) -> FlowPair:
        raise NotImplementedError


@FLOW_SOURCES.register_module(name="dis")
class DISFlow(FlowSource):
    """OpenCV DIS (Kroeger et al. 2016) on grayscale frames, forward and backward."""

    PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}

    def __init__(self, preset: str = "medium", **kwargs: float) -> None:
        super().__init__(**kwargs)
        if preset not in self.PRESETS:
            raise KeyError(f"unknown DIS preset '{preset}'; choose one of {sorted(self.PRESETS)}")
        self.preset = preset
        self._dis: Any = None  # cv2 objects do not pickle: build lazily in each worker

    def _gray(self, img: torch.Tensor) -> np.ndarray:
        rgb = (img.permute(1, 2, 0).cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)

    def flow(self, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        if self._dis is None:
            self._dis = cv2.DISOpticalFlow_create(self.PRESETS[self.preset])
        return torch.from_numpy(self._dis.calc(a, b, None)).permute(2, 0, 1)

    def forward(self, img1: torch.Tensor, img2: torch.Tensor, info: dict[str, Any] | None = None) -> FlowPair:
        fws, bws = [], []
        for a, b in zip(img1, img2, strict=True):
            ga, gb = self._gray(a), self._gray(b)
            fws.append(self.flow(ga, gb))
            bws.append(self.flow(gb, ga))
        return FlowPair.from_consistency(torch.stack(fws).to(img1.device), torch.stack(bws).to(img1.device),
                                         self.alpha1, self.alpha2)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_dis"] = None
        return state


RAFT_WEIGHTS = {"large": "Raft_Large_Weights", "small": "Raft_Small_Weights"}


def raft_weights(size: str, weights: str) -> Any:
    """torchvision's weights enum member for RAFT ``size`` ('large'/'small') and ``weights`` name,
    with an error that lists the names that exist for that size."""
    from torchvision.models import optical_flow

    if size not in RAFT_WEIGHTS:
        raise KeyError(f"unknown RAFT size '{size}'; choose 'large' or 'small'")
    enum = getattr(optical_flow, RAFT_WEIGHTS[size])
    if weights not in enum.__members__:
        raise KeyError(f"RAFT-{size} has no weights '{weights}'; torchvision has {sorted(enum.__members__)}")
    return enum[weights]


@FLOW_SOURCES.register_module(name="raft")
class RAFTFlow(FlowSource):
    """torchvision RAFT, frozen and in eval mode (FlowE §3.3). Weights come from ``checkpoint`` (a
    local file) or torchvision's cache file of ``weights``; nothing is downloaded implicitly.

    ``weights`` (torchvision's names):

    * ``C_T_V2`` (default) — FlyingChairs + FlyingThings3D only: strictly synthetic, the property
      FlowE relies on ("only synthetic data with no human labeling", §3.3). No Sintel fine-tuning,
      so it is somewhat less accurate on real footage (KITTI-train F1-all 16.1%).
    * ``C_T_SKHT_V2`` — torchvision's default: + a Sintel/KITTI/HD1K/Things fine-tuning mixture, the
      counterpart of the original RAFT "sintel" checkpoint (which FlowE's "Chairs, Things and Sintel"
      may describe). More accurate, but KITTI and HD1K are real *driving* data with ground-truth
      flow, the domain the readouts are evaluated on (BDD100K, Cityscapes).
    * ``C_T_SKHT_K_V2`` — further fine-tuned on KITTI; ``*_V1`` are the ports of the original files.
      RAFT-small has ``C_T_V1``/``C_T_V2`` only.

    ``num_flow_updates``: 32 refinement iterations, RAFT's own Sintel evaluation setting (Teed &
    Deng 2020; 24 for KITTI); FlowE does not state one. 12 (torchvision's forward default) runs
    12/32 of the update iterations: cheaper, slightly coarser flow.

    ``amp``: RAFT runs in fp32 even when the objective is under bf16 autocast (its correlation
    lookup builds pixel coordinates); ``amp=True`` lets it run in bf16 on the training device.
    """

    runs_in_data = False

    def __init__(self, size: str = "large", weights: str = "C_T_V2", checkpoint: str | None = None,
                 num_flow_updates: int = 32, amp: bool = False, **kwargs: float) -> None:
        super().__init__(**kwargs)
        from torchvision.models import optical_flow

        self.weights = raft_weights(size, weights)
        self.model = getattr(optical_flow, f"raft_{size}")(weights=None, progress=False)
        self.model.load_state_dict(self._state_dict(size, self.weights, checkpoint))
        self.model.eval().requires_grad_(False)
        if num_flow_updates < 1:
            raise ValueError(f"num_flow_updates must be >= 1, got {num_flow_updates}")
        self.num_flow_updates, self.amp = num_flow_updates, amp

    @staticmethod
    def weights_file(size: str, weights: str) -> str:
        """torchvision's cache file name of these weights (what to pass as ``checkpoint`` offline)."""
        return os.path.basename(raft_weights(size, weights).url)

    @staticmethod
    def _state_dict(size: str, weights: Any, checkpoint: str | None) -> dict[str, torch.Tensor]:
        if checkpoint is None:
            checkpoint = str(torchvision_weights_file(
                weights.url, f"RAFT-{size} {weights.name}", "flow.checkpoint",
                f"; or pick other weights with flow.weights (RAFT-{size} has "
                f"{sorted(type(weights).__members__)}), or use flow=dict(type='dis'), which needs no weights"))
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"RAFT checkpoint {path} does not exist")
        others = {os.path.basename(w.url): w.name for w in type(weights) if w is not weights}
        if path.name in others:  # torchvision's file of *other* weights: the config would mislabel the run
            raise ValueError(f"RAFT checkpoint {path.name} is torchvision's {others[path.name]} file, but "
                             f"flow.weights='{weights.name}'; set flow.weights='{others[path.name]}'")
        state = safe_torch_load(path, what="RAFT checkpoint")
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ValueError(f"RAFT checkpoint {path} holds a {type(state).__name__}, "
                             "not a torchvision RAFT state dict")
        return state

    def train(self, mode: bool = True) -> RAFTFlow:  # frozen: never leave eval mode
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, img1: torch.Tensor, img2: torch.Tensor, info: dict[str, Any] | None = None) -> FlowPair:
        h, w = img1.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8  # RAFT needs sizes divisible by 8
        with fp32_geometry():  # the caller's bf16 autocast stops here; amp=True opts RAFT back in
            a = F.pad(torch.cat([img1, img2]).float() * 2 - 1, (0, pw, 0, ph), mode="replicate")
            b = F.pad(torch.cat([img2, img1]).float() * 2 - 1, (0, pw, 0, ph), mode="replicate")
            with torch.autocast(a.device.type, dtype=torch.bfloat16, enabled=self.amp):
                flow = self.model(a, b, num_flow_updates=self.num_flow_updates)[-1]
        fw, bw = flow[..., :h, :w].float().chunk(2)
        return FlowPair.from_consistency(fw, bw, self.alpha1, self.alpha2)


@FLOW_SOURCES.register_module(name="precomputed")
class PrecomputedFlow(FlowSource):
    """Reads ``{root}/{key}_fw.png`` / ``_bw.png`` written by ``flowssl flow precompute``."""

    needs_full_frames = True

    def __init__(self, root: str, **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        info = read_cache_info(self.root)
        self.scale = float(info["scale"])
        self.key_format = info["key_format"]
        # masks in the PNGs are usable when they are the check this source would compute (same α)
        valid = info.get("valid") or {}
        self.stored_valid = (valid.get("kind") == "forward-backward consistency"
                             and (valid.get("alpha1"), valid.get("alpha2")) == (self.alpha1, self.alpha2))

    def forward(self, img1: torch.Tensor, img2: torch.Tensor, info: dict[str, Any] | None = None) -> FlowPair:
        if not info or "keys" not in info:
            raise ValueError("precomputed flow needs the pair keys of the batch (info['keys'])")
        if self.key_format != CACHE_KEY_FORMAT:
            for key in info["keys"]:
                if "%" in str(key).rsplit("/", 1)[-1]:  # an escaped stem: this format keyed it ambiguously
                    raise FlowFileError(
                        f"flow cache {self.root} has key format {self.key_format!r}, whose keys were ambiguous for "
                        f"frame names with '__', '%' or a leading/trailing '_' (pair {key}: two pairs could share "
                        "one flow); fill a new cache with 'flowssl flow precompute --out <new folder>'")
        read = [[read_flow_png(self.root / f"{key}_{d}.png", self.scale) for d in ("fw", "bw")]
                for key in info["keys"]]
        stack = lambda d, i: torch.stack([r[d][i] for r in read]).to(img1.device)  # noqa: E731
        if self.stored_valid:
            return FlowPair(stack(0, 0), stack(1, 0), stack(0, 1), stack(1, 1))
        return FlowPair.from_consistency(stack(0, 0), stack(1, 0), self.alpha1, self.alpha2)


@FLOW_SOURCES.register_module(name="ground_truth")
class GroundTruthFlow(FlowSource):
    """The synthetic video's exact flow and occlusion; ``info`` carries the video and the two times."""

    needs_full_frames = True

    def forward(self, img1: torch.Tensor, img2: torch.Tensor, info: dict[str, Any] | None = None) -> FlowPair:
        if not info or "videos" not in info:
            raise ValueError("ground-truth flow exists only for the synthetic video (info['videos'], ['times'])")
        out = [(v.flow(t1, t2), v.flow(t2, t1)) for v, (t1, t2) in zip(info["videos"], info["times"], strict=True)]
        stack = lambda i, k: torch.stack([o[i][k] for o in out]).to(img1.device)  # noqa: E731
        return FlowPair(stack(0, "flow"), stack(1, "flow"), stack(0, "valid"), stack(1, "valid"))


@FLOW_SOURCES.register_module(name="identity")
class IdentityFlow(FlowSource):
    """Zero flow everywhere: the "FlowE without flow" ablation (video + identity, Table 4)."""

    def forward(self, img1: torch.Tensor, img2: torch.Tensor, info: dict[str, Any] | None = None) -> FlowPair:
        b, _, h, w = img1.shape
        zero = img1.new_zeros(b, 2, h, w)
        ones = torch.ones(b, h, w, dtype=torch.bool, device=img1.device)
        return FlowPair(zero, zero.clone(), ones, ones.clone())


def build_flow_source(cfg: dict[str, Any] | None) -> FlowSource | None:
    if cfg is None:
        return None
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if FLOW_SOURCES.get(kind) is None:
        raise KeyError(f"unknown flow source '{kind}'; choose one of {sorted(FLOW_SOURCES.module_dict)}")
    return FLOW_SOURCES.get(kind)(**cfg)
