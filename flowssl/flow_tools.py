"""``flowssl flow precompute`` and ``flowssl flow show``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import torch
from torchvision.utils import flow_to_image
from tqdm import tqdm

from pretrain.data.frames import try_read_rgb
from pretrain.dist import launch_ranks
from pretrain.fileio import remove_stale_temps, write_text_atomic
from pretrain.flow.io import KITTI_SCALE, positive_scale, write_flow_png
from pretrain.flow.sources import CACHE_KEY_FORMAT, FlowSource, read_cache_info
from pretrain.flow.warp import warp

CACHE_INFO = "flow_cache.json"
SHARDS_DIR = "flow_cache.shards"  # one record per shard of a sharded fill; the merge reads them


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → (I, N) with 0 ≤ I < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None or not int(m[1]) < int(m[2]):
        raise ValueError(f"--shard takes I/N with 0 <= I < N (shard I of N, counted from 0), got {text!r}")
    return int(m[1]), int(m[2])


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(shard, shards) of this process: its rank among the processes torchrun or srun started, within
    its task of a SLURM job array (``--array=0-15``: ids must be consecutive); (0, 1) alone."""
    env = os.environ if env is None else env
    rank, _, world = launch_ranks(env)
    if "SLURM_ARRAY_TASK_ID" not in env:
        return rank, world
    task, low = int(env["SLURM_ARRAY_TASK_ID"]), int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    tasks = int(env.get("SLURM_ARRAY_TASK_MAX", task)) - low + 1
    if int(env.get("SLURM_ARRAY_TASK_COUNT", tasks)) != tasks:
        raise ValueError(f"the job array's task ids {low}..{low + tasks - 1} are not consecutive "
                         f"(SLURM_ARRAY_TASK_COUNT={env['SLURM_ARRAY_TASK_COUNT']}): give each task --shard I/N")
    return (task - low) * world + rank, tasks * world


def _fingerprint(keys: list[str]) -> str:
    """The pair list every shard must have split the same way."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def _record_path(out: Path, shard: int, shards: int) -> Path:
    return out / SHARDS_DIR / f"shard-{shard:05d}-of-{shards:05d}.json"


def _read_records(out: Path) -> dict[Path, dict[str, Any]]:
    records = {}
    for path in sorted((out / SHARDS_DIR).glob("shard-*-of-*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"shard record {path} cannot be read ({exc}); delete it and rerun that shard "
                             "(the flow files it wrote stay)") from None
        if not isinstance(rec, dict) or not {"shard", "shards", "state", "info", "pairs"} <= set(rec):
            raise ValueError(f"shard record {path} is not one flowssl wrote; delete it and rerun that shard")
        records[path] = rec
    return records


def _check_records(out: Path, records: dict[Path, dict[str, Any]], want: dict[str, Any], keys: list[str],
                   sharded: bool) -> None:
    """Every shard must store the same flow (scale, source, masks); shards of one fill must also
    split the same pair list the same way (same count, batch size and list), or pairs fall between."""
    for path, rec in records.items():
        if rec["info"] != want["info"]:
            theirs = {k: v for k, v in rec["info"].items() if want["info"].get(k) != v}
            raise ValueError(f"{out} is being filled with other settings ({path}: {theirs}); use the same --source, "
                             "--scale and config, or another --out")
        if not sharded:
            continue
        for field, shown in (("shards", "--shard I/{}"), ("batch_size", "--batch-size {}"), ("pairs", "{} pairs")):
            if rec.get(field) != want[field]:
                raise ValueError(f"{out} is being filled with {shown.format(rec.get(field))} ({path}) but this run "
                                 f"has {shown.format(want[field])}; use the same, or delete {out / SHARDS_DIR} to "
                                 "split anew (the flow files stay valid)")
        if rec.get("pairs_sha256") != want["pairs_sha256"]:
            raise ValueError(f"the frame pairs changed since {path} was written (same count, other frames); delete "
                             f"{out / SHARDS_DIR} and rerun every shard (finished pairs are skipped)")


def _cache_info(out: Path, keys: list[str], source: FlowSource, scale: float) -> dict[str, Any]:
    """What ``flow_cache.json`` says, checked against the one already there."""
    info = {"scale": scale, "source": type(source).__name__, "format": "16-bit PNG, (I - 2^15)/scale, valid=ch3",
            "key_format": CACHE_KEY_FORMAT,
            "valid": {"kind": "forward-backward consistency", "alpha1": source.alpha1, "alpha2": source.alpha2}}
    if (out / CACHE_INFO).exists():
        old = read_cache_info(out)  # a corrupt or hand-edited one is refused, naming the file
        if old["scale"] != scale:
            raise ValueError(f"{out} was filled with scale {old['scale']} ({out / CACHE_INFO}); use another --out or "
                             f"--scale {old['scale']}")
        if old["key_format"] != CACHE_KEY_FORMAT:  # its keys are this format's unless a stem needs escaping
            ambiguous = [k for k in keys if "%" in k.rsplit("/", 1)[-1]]
            if ambiguous:
                raise ValueError(f"{out} was filled by a flowssl whose keys were ambiguous for frame names with '__', "
                                 f"'%' or a leading/trailing '_' (pair {ambiguous[0]}: two pairs could share one "
                                 "flow); use a new --out")
        if old.get("valid") != info["valid"]:  # pairs already written hold no masks, or other α: say none
            info.pop("valid")
    return info


def _ordered(fn: Callable[[Any], Any], items: list[Any], pool: ThreadPoolExecutor | None,
             depth: int) -> Iterator[Any]:
    """``map(fn, items)`` in order, at most ``depth`` items ahead (reading frames while the device
    computes, without holding a whole shard in memory)."""
    if pool is None:
        yield from map(fn, items)
        return
    ahead: deque[Future[Any]] = deque()
    for item in items:
        ahead.append(pool.submit(fn, item))
        if len(ahead) > depth:
            yield ahead.popleft().result()
    while ahead:
        yield ahead.popleft().result()


def precompute_cache(pairs: list[tuple[Path, Path]], keys: list[str], out: Path, source: FlowSource,
                     scale: float = KITTI_SCALE, device: str = "cpu", shard: tuple[int, int] = (0, 1),
                     batch_size: int = 1, workers: int = 0) -> dict[str, int]:
    """Fill ``out`` with ``{key}_fw.png``/``{key}_bw.png`` for every pair; pairs already done are
    skipped, so an interrupted run resumes where it stopped. Returns counts.

    Each PNG's third channel holds the forward–backward consistency mask of its direction (the
    source's α₁, α₂, recorded in ``flow_cache.json``), so training reads it instead of recomputing
    the check at full frame size in every worker. A cache begun without masks stays without.

    Sharding: the pairs are cut into batches of ``batch_size`` consecutive pairs and shard I of N
    computes batches I, I+N, I+2N, ... — the batches themselves do not depend on N (and a resumed
    batch is recomputed whole), so any number of shards, interrupted or not, writes the bytes one
    process writes. Shards write disjoint files (each atomically); a sharded fill records each shard
    in ``flow_cache.shards/`` and the last shard to finish writes ``flow_cache.json`` (:func:`merge_shards`).
    ``workers`` threads read frames and write PNGs while the source computes."""
    if not positive_scale(scale):
        raise ValueError(f"--scale must be a positive finite number (1/scale px precision), got {scale}")
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: the index must be in 0..{count - 1}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size!r}")
    sharded = count > 1
    info = _cache_info(out, keys, source, scale)
    want = {"shard": index, "shards": count, "batch_size": batch_size, "pairs": len(keys),
            "pairs_sha256": _fingerprint(keys), "info": info, "state": "running"}
    _check_records(out, _read_records(out), want, keys, sharded)
    out.mkdir(parents=True, exist_ok=True)
    record = _record_path(out, index, count)
    if sharded:
        write_text_atomic(json.dumps(want, indent=2), record)
    else:
        write_text_atomic(json.dumps(info, indent=2), out / CACHE_INFO)
    counts = {"done": 0, "skipped": 0, "unreadable": 0}
    source = source.to(device)
    step = batch_size * count
    mine = [range(s, min(s + batch_size, len(keys))) for s in range(index * batch_size, len(keys), step)]

    def paths(i: int) -> tuple[Path, Path]:
        return out / f"{keys[i]}_fw.png", out / f"{keys[i]}_bw.png"

    def load(batch: range) -> tuple[range, list[int], dict[int, Any]]:
        """(batch, its pairs still missing, {pair: (img1, img2) or why not}): frames of the whole batch
        when something in it is to compute, so the source sees the batch an uninterrupted run saw."""
        missing = [i for i in batch if not all(p.is_file() for p in paths(i))]
        frames: dict[int, Any] = {}
        for group in (missing, [i for i in batch if i not in missing]):
            for i in group:
                frames[i] = _read_pair(*pairs[i])
            if not any(isinstance(frames[i], tuple) for i in missing):
                break  # nothing to compute: every missing pair is unreadable (or none is missing)
        return batch, missing, frames

    writes: deque[Future[Any]] = deque()
    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    desc = f"flow precompute shard {index}/{count}" if sharded else "flow precompute"
    bar = tqdm(total=sum(len(b) for b in mine), desc=desc, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 30)  # a cluster log: a line every 30 s
    try:
        for batch, missing, frames in _ordered(load, mine, pool, 2 * workers):
            counts["skipped"] += len(batch) - len(missing)
            for i in missing:
                if isinstance(frames[i], str):
                    counts["unreadable"] += 1
                    tqdm.write(f"skipping pair {pairs[i][0].name} / {pairs[i][1].name}: {frames[i]}")
            readable = [i for i in batch if isinstance(frames.get(i), tuple)]
            for flows in _flow_batches(source, readable, frames, keys, device):
                for i, (fw, bw, valid_fw, valid_bw) in flows.items():
                    if i not in missing:
                        continue
                    fw_path, bw_path = paths(i)
                    jobs = [(fw_path, fw, valid_fw), (bw_path, bw, valid_bw)]
                    for job in jobs:
                        if pool is None:
                            write_flow_png(*job, scale=scale)
                        else:
                            writes.append(pool.submit(write_flow_png, *job, scale=scale))
                    counts["done"] += 1
            while len(writes) > 4 * workers:
                writes.popleft().result()
            bar.update(len(batch))
        while writes:
            writes.popleft().result()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if not sharded:  # the only writer: what killed writes left is garbage
        _remove_stale_temps(out, keys)
    else:
        write_text_atomic(json.dumps({**want, "state": "done", "counts": counts}, indent=2), record)
        finished = sum(r["state"] == "done" for r in _read_records(out).values())
        counts["finished_shards"] = finished
        counts["merged"] = int(finished == count and merge_shards(out, keys, required=False))
    return counts


def _read_pair(a: Path, b: Path) -> tuple[torch.Tensor, torch.Tensor] | str:
    """The two frames, or why the pair cannot be used (naming the file)."""
    (img1, why1), (img2, why2) = try_read_rgb(a), try_read_rgb(b)
    if img1 is None or img2 is None:
        bad, why = (a, why1) if img1 is None else (b, why2)
        return f"{bad} cannot be used: {why}"
    if img1.shape != img2.shape:
        return f"{a.name} is {img1.shape[2]}×{img1.shape[1]} but {b.name} is {img2.shape[2]}×{img2.shape[1]}"
    return img1, img2


def _flow_batches(source: FlowSource, readable: list[int], frames: dict[int, Any], keys: list[str],
                  device: str) -> Iterator[dict[int, tuple[torch.Tensor, ...]]]:
    """The source on the batch's readable pairs, one call per frame size (in order of appearance),
    results on the CPU: ``{pair: (fw, bw, valid_fw, valid_bw)}``."""
    sizes: dict[tuple[int, ...], list[int]] = {}
    for i in readable:
        sizes.setdefault(tuple(frames[i][0].shape), []).append(i)
    for group in sizes.values():
        img1 = torch.stack([frames[i][0] for i in group]).to(device)
        img2 = torch.stack([frames[i][1] for i in group]).to(device)
        pair = source(img1, img2, {"keys": [keys[i] for i in group]})
        fw, bw, vfw, vbw = (t.cpu() for t in (pair.fw, pair.bw, pair.valid_fw, pair.valid_bw))
        yield {i: (fw[n], bw[n], vfw[n], vbw[n]) for n, i in enumerate(group)}


def merge_shards(out: Path, keys: list[str], required: bool = True) -> bool:
    """Write ``flow_cache.json`` of a sharded fill once every shard recorded that it finished and all
    agree (settings, split, pair list), and delete temp files killed writers left; the result is the
    file one process writes. ``required`` False (a shard's automatic merge): return False when shards
    are missing; True (``--merge``): say which, in one line."""
    records = _read_records(out)
    if not records:
        raise ValueError(f"{out} holds no shard records ({out / SHARDS_DIR}); --merge joins the shards of "
                         "'flowssl flow precompute --shard I/N' (or of torchrun/srun/a job array)")
    first = next(iter(records.values()))
    count = first["shards"]
    want = {**first, "pairs": len(keys), "pairs_sha256": _fingerprint(keys)}
    _check_records(out, records, want, keys, sharded=True)
    done = {r["shard"] for r in records.values() if r["state"] == "done"}
    if len(done) < count:
        if not required:
            return False
        left = [i for i in range(count) if i not in done]
        shown = ", ".join(map(str, left[:8])) + (", …" if len(left) > 8 else "")
        raise ValueError(f"{out}: shard(s) {shown} of {count} have not finished ({out / SHARDS_DIR}); run them "
                         f"(--shard I/{count}, finished pairs are skipped) before --merge")
    _remove_stale_temps(out, keys)
    write_text_atomic(json.dumps(first["info"], indent=2), out / CACHE_INFO)
    return True


def _remove_stale_temps(out: Path, keys: list[str]) -> None:
    """Temp PNGs of writes a kill interrupted (their pairs were recomputed on resume). Only when no
    shard is writing: a running shard's temp file is not stale."""
    for folder in sorted({(out / k).parent for k in keys}):
        remove_stale_temps(folder, "*_[fb]w.png")


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


__all__ = ["merge_shards", "parse_shard", "precompute_cache", "shard_from_env", "show_pair"]
