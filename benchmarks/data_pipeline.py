"""FlowE data pipeline at the paper's shapes: pairs/s per worker and where the time goes.

BDD100K-like input (720×1280 frames, JPEG folders or an MP4 video), upsampled to 1080×1920 with a
random scale in 0.75–1.25, a 512×1024 crop at the same place in both frames, two random-affine
views with SimCLR colour distortion (FlowE §4.2). One worker is one process, so a worker's rate is
1 / (seconds per pair) measured here in one process; the split is by stage: decode, flow, resize
(scale + crop), augment (views, colour, normalisation) and collate (a batch of 2 pairs).

    python benchmarks/data_pipeline.py                      # every flow source × input, 8 pairs each
    python benchmarks/data_pipeline.py --pairs 16 --sources dis precomputed --inputs frames
    python benchmarks/data_pipeline.py --clip-cache --videos 8   # the CPU demo's data: rendered vs clip cache

``--clip-cache``: the CPU demo's data (configs/pretrain/{flowe,byol}_r10n_synthetic_demo.py: 64×128
crops of the 128×256 video with exact flow, and BYOL's views of whole frames) with ``--videos`` of its
videos, rendered per sample (as without a cache) or read from a clip cache rendered once first
(its cost printed per video); samples/s of one worker and batches (of 8) per second.

Inputs are generated offline (the synthetic video rendered at 720×1280) into a temp folder; the
precomputed cache is filled first (not timed). It reports; it never fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("decode", "flow", "resize", "augment", "collate")
SOURCES = ("dis", "precomputed", "ground_truth")
INPUTS = ("frames", "video")
PAPER = {"crop_size": (512, 1024), "scale_range": (0.75, 1.25), "resize_to": (1080, 1920)}


def use_slow_paths() -> None:
    """Undo the three speed-ups this benchmark motivated, to print the 'before' numbers."""
    import torch.nn.functional as F
    from torchvision.transforms import v2

    from pretrain.data import augment, pairs
    from pretrain.flow import sources

    init = sources.PrecomputedFlow.__init__

    def recheck_consistency(self, *args, **kwargs):  # ignore the cached masks: recompute them per pair
        init(self, *args, **kwargs)
        self.stored_valid = False

    sources.PrecomputedFlow.__init__ = recheck_consistency

    augment.GaussianBlur.transform = v2.GaussianBlur.transform

    def resize_whole_then_crop(x, size, box, mode="bilinear"):
        y0, x0, ch, cw = box
        if mode == "nearest":
            return F.interpolate(x.float(), size, mode="nearest")[..., y0:y0 + ch, x0:x0 + cw] > 0.5
        full = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)
        return full[..., y0:y0 + ch, x0:x0 + cw]

    pairs.resized_crop = resize_whole_then_crop


def write_inputs(root: Path, frames: int, size: tuple[int, int]) -> tuple[Path, Path]:
    """A folder of JPEG frames and an MP4 of the same synthetic video (BDD100K is 30 fps JPEG/MOV)."""
    from pretrain.data.synthetic import MovingShapesVideo

    video = MovingShapesVideo(0, *size)
    folder = root / "frames" / "seq0"
    folder.mkdir(parents=True)
    writer = cv2.VideoWriter(str(root / "video.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (size[1], size[0]))
    for t in range(frames):
        bgr = np.ascontiguousarray((video.render(t)["image"].permute(1, 2, 0).numpy()[:, :, ::-1] * 255)
                                   .round().astype(np.uint8))
        cv2.imwrite(str(folder / f"{t:06d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        writer.write(bgr)
    writer.release()
    return root / "frames", root / "video.mp4"


def build(source: str, inputs: str, frames_root: Path, video: Path, cache: Path, size: tuple[int, int]):
    from pretrain.data.pairs import FrameFolderPairs, SyntheticPairs, VideoPairs

    if source == "ground_truth":  # only the synthetic video has exact flow: rendering is its "decode"
        return SyntheticPairs(num_videos=1, num_frames=8, frame_gap=15, height=size[0], width=size[1],
                              flow={"type": "ground_truth"}, **PAPER)
    flow = {"type": "precomputed", "root": str(cache)} if source == "precomputed" else {"type": "dis"}
    if inputs == "video":
        return VideoPairs(str(video.parent), interval_s=0.5, flow=flow, **PAPER)
    return FrameFolderPairs(str(frames_root), interval=15, flow=flow, **PAPER)


def measure(dataset, pairs: int) -> dict[str, float]:
    """Seconds per pair by stage (after one warm-up pair) and pairs/s of one worker."""
    from pretrain.data.pairs import StageTimes

    dataset[0]
    dataset.stage_times = StageTimes()
    t0 = time.perf_counter()
    samples = [dataset[i] for i in range(1, pairs + 1)]
    for i in range(0, len(samples) - 1, 2):
        with dataset.stage_times("collate"):
            default_collate(samples[i:i + 2])
    total = time.perf_counter() - t0
    out = {s: dataset.stage_times.seconds.get(s, 0.0) / pairs for s in STAGES}
    out["total"], out["pairs_per_s"] = total / pairs, pairs / total
    return out


def clip_cache(videos: int, samples: int) -> None:
    """The demo's data side per worker, rendered per sample vs read from a clip cache (built first)."""
    from pretrain.api import load_config
    from pretrain.registry import DATASETS, build_from

    configs = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
    print(f"CPU demo data side, {videos} video(s), one worker (1 thread), {samples} samples timed per row")
    print(f"{'data':<8}{'source':<13}{'s/sample':>10}{'samples/s':>11}{'batch of 8 (s)':>16}{'speed-up':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("flowe", "byol"):
            data = dict(load_config(configs / f"{method}_r10n_synthetic_demo.py").data, num_videos=videos)
            rendered = build_from(DATASETS, data, "dataset", "data", seed=0)
            t0 = time.perf_counter()
            cached = build_from(DATASETS, {**data, "clip_cache": tmp}, "dataset", "data", seed=0)
            build = time.perf_counter() - t0
            rates = {}
            for name, ds in (("rendered", rendered), ("clip cache", cached)):
                ds[0]  # warm-up
                t0 = time.perf_counter()
                for i in range(1, samples + 1):
                    ds[i]
                rates[name] = (time.perf_counter() - t0) / samples
                print(f"{method:<8}{name:<13}{rates[name]:>10.4f}{1 / rates[name]:>11.1f}{8 * rates[name]:>16.3f}"
                      f"{rates['rendered'] / rates[name]:>9.1f}×", flush=True)
            print(f"{method:<8}clip cache rendered once in {build:.1f} s ({build / videos:.2f} s per video; the pairs' "
                  "frames serve BYOL too)" if method == "flowe" else
                  f"{method:<8}clip cache: {build:.1f} s (frames already rendered for the pairs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8, help="pairs timed per setting")
    ap.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    ap.add_argument("--inputs", nargs="+", choices=INPUTS, default=list(INPUTS))
    ap.add_argument("--size", type=int, nargs=2, default=(720, 1280), help="source frame H W (BDD100K: 720 1280)")
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenCV threads (a DataLoader worker has 1)")
    ap.add_argument("--before", action="store_true",
                    help="the pipeline before its speed-ups (torchvision's 2-D blur, resize whole frames then crop, "
                         "recompute the cached flow's consistency masks)")
    ap.add_argument("--clip-cache", action="store_true",
                    help="the CPU demo's synthetic data: rendered per sample vs a clip cache rendered once")
    ap.add_argument("--videos", type=int, default=8, help="--clip-cache: videos of the demo's 64 to use")
    args = ap.parse_args()
    if args.clip_cache:
        torch.set_num_threads(1)  # a DataLoader worker's
        clip_cache(args.videos, args.pairs)
        return
    if args.before:
        use_slow_paths()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    size = tuple(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frames_root, video = write_inputs(root, 32, size)
        if "precomputed" in args.sources:
            from flowssl.flow_tools import precompute_cache
            from pretrain.flow.sources import build_flow_source

            ds = build("dis", "frames", frames_root, video, root / "cache", size)
            precompute_cache(ds.pairs[:4], [ds.pair_key(a, b) for a, b in ds.pairs[:4]], root / "cache",
                             build_flow_source({"type": "dis"}))
            ds_pre = build("precomputed", "frames", frames_root, video, root / "cache", size)
            ds_pre.pairs = ds_pre.pairs[:4]  # the cached ones
        print(f"FlowE data pipeline, source frames {size[0]}×{size[1]} → ×{PAPER['resize_to'][0] / size[0]:.2f} "
              f"× U{PAPER['scale_range']} → crop {PAPER['crop_size'][0]}×{PAPER['crop_size'][1]}, "
              f"{args.threads} thread(s) per worker, {args.pairs} pairs"
              + (", BEFORE the speed-ups" if args.before else ""))
        print(f"{'flow':<13}{'input':<8}" + "".join(f"{s:>9}" for s in STAGES) + f"{'s/pair':>9}{'pairs/s':>9}")
        for source in args.sources:
            for inputs in args.inputs:
                if source == "ground_truth" and inputs != args.inputs[0]:
                    continue  # one row: the synthetic video is rendered, not read
                if source == "precomputed" and inputs == "video":
                    continue  # the cache is filled from frame pairs
                ds = ds_pre if source == "precomputed" else build(source, inputs, frames_root, video,
                                                                  root / "cache", size)
                r = measure(ds, args.pairs)
                label = "rendered" if source == "ground_truth" else inputs
                print(f"{source:<13}{label:<8}" + "".join(f"{r[s]:>9.3f}" for s in STAGES)
                      + f"{r['total']:>9.3f}{r['pairs_per_s']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
