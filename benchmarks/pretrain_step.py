"""FlowE training-step cost: pairs/s, peak memory and MFU, for both loss resolutions.

Default setting: the paper's (FlowE §4.2): ResNet-50 OS8, BYOL-sized heads, one-directional loss
(Algorithm 1), LARS, one optimiser step — ``Trainer.run_step``, the step training runs (its finite
checks and logging included); on a GPU 2 and 8 frame pairs of 512×1024 per GPU under bf16
autocast (the trainer's path), on CPU 2 pairs of 256×512 in fp32. Flow is given (``--flow given``,
the flow network is not timed) or computed by a frozen RAFT-large in fp32 (``--flow raft``, random
weights: the cost does not depend on them). Prints time per step, pairs/s, the share of the flow
composition + warp + loss part, peak memory, model FLOPs per step and model FLOP utilisation (MFU
= FLOPs per step / step time / peak dense bf16 FLOP/s of the device). It reports; it never fails.

    python benchmarks/pretrain_step.py --device cuda --amp bf16              # the GPU numbers, one command
    python benchmarks/pretrain_step.py --device cpu --arch resnet14 --size 64 128 --steps 1
    python benchmarks/pretrain_step.py --compare flowe byol --rounds 20      # CPU demo: ResNet-14 vs resnet10n

``--compare``: the CPU demo's pretraining step (``configs/pretrain/<method>_r14_synthetic_demo.py``
against ``<method>_r10n_synthetic_demo.py``: batch 8 of 64×128 crops, the configs' heads and optimiser,
``Trainer.run_step``) — samples/s of each encoder and their ratio. The batches are drawn from the
configs' datasets before timing (the data side is benchmarks/data_pipeline.py's), and all variants
run in one process, interleaved step by step (``--rounds`` times each), so load from other jobs on a
shared CPU slows them alike; the median step is reported.

FLOPs are counted once per setting with ``torch.utils.flop_counter.FlopCounterMode`` on a whole
step (forward, backward, the target network and RAFT when it runs; matmuls and convolutions).
Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS above its
level after building the model. Each setting runs in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_mb, run_child  # noqa: E402

RESOLUTIONS = ("image", "image_whole", "feature")
SWEEP_SIZES = ((128, 256), (256, 512), (512, 1024))
SWEEP_PAIRS = (1, 2, 4)

# Dense bf16 tensor-core peak per GPU (FLOP/s, no sparsity), from the vendors' data sheets.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "GH200": 989e12, "B200": 2250e12,
             "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def default_peak(device: str) -> tuple[float | None, str]:
    """The peak for the current GPU from :data:`PEAK_BF16` (the H100 SXM's if unknown); None on CPU."""
    if not device.startswith("cuda"):
        return None, "no peak known for CPU; pass --peak-tflops for an MFU"
    name = torch.cuda.get_device_name(torch.device(device))
    for key, peak in PEAK_BF16.items():  # longest names first where they overlap ("H100 PCIe" before "H100")
        if key in name:
            return peak, f"{name}: {peak / 1e12:.0f} TFLOP/s bf16 dense"
    return 989e12, f"{name} not in the table: assumed an H100 SXM's 989 TFLOP/s (set --peak-tflops)"


def _raft_checkpoint() -> str:
    """A random RAFT-large state dict in a temp file: timing does not depend on the weights."""
    from torchvision.models.optical_flow import raft_large

    path = Path(tempfile.mkdtemp()) / "raft_large_random.pth"
    torch.save(raft_large(weights=None).state_dict(), path)
    return str(path)


def measure(resolution: str, arch: str, size: tuple[int, int], pairs: int, steps: int, device: str, amp: str,
            flow_kind: str, raft_updates: int, symmetric: bool) -> dict[str, float]:
    from mmengine.config import Config
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.api import Trainer

    flow_cfg = None
    if flow_kind == "raft":
        flow_cfg = {"type": "raft", "size": "large", "checkpoint": _raft_checkpoint(),
                    "num_flow_updates": raft_updates, "amp": False}
    # "image": Algorithm 1 in bands of rows (the default); "image_whole": the straightforward version
    model = {"type": "flowe", "encoder": {"arch": arch, "output_stride": 8},
             "loss_resolution": resolution.removesuffix("_whole"), "symmetric": symmetric, "flow": flow_cfg,
             "loss_chunk_rows": 0 if resolution == "image_whole" else 32}
    # no data section: the batch below is fed to run_step; no work dir: nothing is written
    cfg = Config({"model": model, "optimizer": {"type": "LARS", "lr": 0.1, "weight_decay": 1e-6},
                  "batch_size": pairs, "max_iters": steps + 2, "checkpoint_interval": steps + 2,
                  "device": "cpu" if torch.device(device).type == "cpu" else "auto", "seed": 0})
    trainer = Trainer(cfg)
    trainer.amp = amp == "bf16"  # the precision asked for, on CPU too (training keeps CPU steps in fp32)
    dev = trainer.device
    b, (h, w) = pairs, size
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(b, 2, 3).contiguous()
    batch = {"view1": torch.randn(b, 3, h, w), "view2": torch.randn(b, 3, h, w), "affine1": eye, "affine2": eye}
    if flow_kind == "raft":
        batch.update(frame1=torch.rand(b, 3, h, w), frame2=torch.rand(b, 3, h, w))
    else:
        flow = torch.zeros(b, 2, h, w)
        flow[:, 0] = 4.0
        ones = torch.ones(b, h, w, dtype=torch.bool)
        batch.update(flow_fw=flow, flow_bw=-flow, valid_fw=ones, valid_bw=ones.clone())
    batch = {k: v.to(dev) for k, v in batch.items()}

    part = {"t": 0.0}
    objective = trainer.objective
    inner = objective.equivariance_loss  # the objective's loss: wrapped on this model only, PooDLe's too

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def timed(*args, **kwargs):
        sync()
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        sync()
        part["t"] += time.perf_counter() - t0
        return out

    objective.equivariance_loss = timed
    base = torch.cuda.memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_mb(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> None:  # the trainer's own step: forward under autocast, checks, update, EMA
        trainer.run_step([batch])

    try:
        step()  # warm-up
        part["t"] = 0.0
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        total = (time.perf_counter() - t0) / steps
        loss_part = part["t"] / steps
        peak = peak_mb(dev)
        with FlopCounterMode(display=False) as counter:  # after timing: the counter slows the step down
            step()
    finally:
        del objective.equivariance_loss  # the class's loss again
    return {"step_s": total, "loss_part_s": loss_part, "peak_mb": peak - base,
            "flops": float(counter.get_total_flops())}


# --compare: the CPU demo configs of each method, today's encoder and the narrow one
COMPARE_ARCHS = (("resnet14", "r14"), ("resnet10n", "r10n"))


def compare(methods: list[str], rounds: int, threads: int, batch_size: int) -> None:
    """Samples/s of the demo's pretraining step per method and encoder, interleaved in this process
    (at ``threads`` threads; the caller's thread count is restored afterwards, since it changes results)."""
    before = torch.get_num_threads()
    try:
        _compare(methods, rounds, threads, batch_size)
    finally:
        torch.set_num_threads(before)


def _compare(methods: list[str], rounds: int, threads: int, batch_size: int) -> None:
    import statistics
    from collections import defaultdict

    from torch.utils.data import default_collate
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.api import Trainer, load_config

    torch.set_num_threads(threads)
    root = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
    variants = {}
    for method in methods:
        for arch, tag in COMPARE_ARCHS:
            cfg = load_config(root / f"{method}_{tag}_synthetic_demo.py",
                              {"num_workers": 0, "device": "cpu", "batch_size": batch_size})
            trainer = Trainer(cfg)  # no work dir: nothing is written
            batch = default_collate([trainer.dataset[i] for i in range(batch_size)])  # drawn before timing
            trainer.run_step([batch])  # warm-up
            with FlopCounterMode(display=False) as counter:
                trainer.run_step([batch])
            variants[method, arch] = (trainer, batch, float(counter.get_total_flops()))
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for _ in range(rounds):  # interleaved: a burst of load from other jobs hits every variant
        for key, (trainer, batch, _) in variants.items():
            t0 = time.perf_counter()
            trainer.run_step([batch])
            times[key].append(time.perf_counter() - t0)
    print(f"CPU demo pretraining step: batch {batch_size} of 64×128 crops, Trainer.run_step, {threads} thread(s), "
          f"{rounds} interleaved rounds, median (min-max) step")
    print(f"{'method':<8}{'encoder':<11}{'step (s)':>10}{'min-max (s)':>15}{'samples/s':>11}{'GFLOP/step':>12}"
          f"{'speed-up':>10}")
    for method in methods:
        base = statistics.median(times[method, COMPARE_ARCHS[0][0]])
        for arch, _ in COMPARE_ARCHS:
            t = times[method, arch]
            med = statistics.median(t)
            print(f"{method:<8}{arch:<11}{med:>10.3f}{min(t):>7.3f}-{max(t):<7.3f}{batch_size / med:>11.1f}"
                  f"{variants[method, arch][2] / 1e9:>12.2f}{base / med:>9.2f}×")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, nargs=2, help="view H W (default: 512 1024 on GPU, 256 512 on CPU)")
    ap.add_argument("--pairs", type=int, nargs="+", help="frame pairs per device (default: 2 8 on GPU, 2 on CPU)")
    ap.add_argument("--amp", choices=("bf16", "none"), help="autocast of the objective (default: bf16 on GPU)")
    ap.add_argument("--resolution", nargs="+", choices=RESOLUTIONS, default=list(RESOLUTIONS),
                    help="image: Algorithm 1 in bands of rows; image_whole: the same with whole upsampled maps")
    ap.add_argument("--flow", choices=("given", "raft"), default="given", help="flow in the batch, or RAFT-large")
    ap.add_argument("--raft-updates", type=int, default=32)
    ap.add_argument("--symmetric", action="store_true", help="both directions (Algorithm 1 has one)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s per device, for the MFU")
    ap.add_argument("--sweep", action="store_true",
                    help="step time and peak memory over crops 128×256 → 512×1024 and 1 → 4 pairs (table + PNG)")
    ap.add_argument("--plot", default="pretrain_step_sweep.png", help="where --sweep draws its plot")
    ap.add_argument("--compare", nargs="+", metavar="METHOD",
                    help="the CPU demo's step per method (flowe, byol, ...): resnet14 vs resnet10n, interleaved")
    ap.add_argument("--rounds", type=int, default=20, help="--compare: timed steps per variant")
    ap.add_argument("--threads", type=int, default=1, help="--compare: torch threads")
    ap.add_argument("--only", choices=RESOLUTIONS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compare:
        compare(args.compare, args.rounds, args.threads, (args.pairs or [8])[0])
        return
    gpu = args.device.startswith("cuda")
    size = tuple(args.size or ((512, 1024) if gpu else (256, 512)))
    pairs_list = args.pairs or ([2, 8] if gpu else [2])
    amp = args.amp or ("bf16" if gpu else "none")
    if args.only:  # child process: one setting, JSON on stdout
        print(json.dumps(measure(args.only, args.arch, size, pairs_list[0], args.steps, args.device, amp,
                                 args.flow, args.raft_updates, args.symmetric)))
        return

    if args.sweep:
        sweep(args, amp)
        return
    if args.peak_tflops:
        peak, peak_note = args.peak_tflops * 1e12, f"{args.peak_tflops:.0f} TFLOP/s (--peak-tflops)"
    else:
        peak, peak_note = default_peak(args.device)
    rows: dict[tuple[str, int], dict[str, float] | str] = {}
    for res in args.resolution:
        for pairs in pairs_list:
            cmd = ["--only", res, "--device", args.device, "--arch", args.arch, "--size", *map(str, size),
                   "--pairs", str(pairs), "--amp", amp, "--flow", args.flow, "--raft-updates",
                   str(args.raft_updates), "--steps", str(args.steps)] + (["--symmetric"] if args.symmetric else [])
            try:
                rows[res, pairs] = run_child(__file__, cmd)
            except subprocess.CalledProcessError as exc:  # e.g. out of memory: report it, go on
                err = (exc.stderr or "").strip().splitlines()
                rows[res, pairs] = err[-1][:80] if err else f"exit {exc.returncode}"

    flow_note = "flow given" if args.flow == "given" else f"RAFT-large fp32, {args.raft_updates} updates"
    print(f"FlowE step, {args.arch} OS8, {size[0]}×{size[1]}, {args.device}, amp {amp}, {flow_note}, "
          f"{'symmetric' if args.symmetric else 'one direction'}")
    print(f"peak: {peak_note}")
    print(f"{'loss res.':<12}{'pairs':>6}{'step (s)':>10}{'pairs/s':>9}{'flow+warp+loss':>16}{'share':>7}"
          f"{'peak (MiB)':>12}{'TFLOP/step':>12}{'TFLOP/s':>9}{'MFU':>7}")
    for (res, pairs), r in rows.items():
        if isinstance(r, str):
            print(f"{res:<12}{pairs:>6}  failed: {r}")
            continue
        rate = r["flops"] / r["step_s"]
        mfu = f"{rate / peak:.1%}" if peak else "n/a"
        print(f"{res:<12}{pairs:>6}{r['step_s']:>10.3f}{pairs / r['step_s']:>9.2f}{r['loss_part_s']:>16.4f}"
              f"{r['loss_part_s'] / r['step_s']:>7.1%}{r['peak_mb']:>12.0f}{r['flops'] / 1e12:>12.3f}"
              f"{rate / 1e12:>9.2f}{mfu:>7}")
    for pairs in pairs_list:
        img, whole, feat = (rows.get((r, pairs)) for r in RESOLUTIONS)
        if isinstance(img, dict) and isinstance(feat, dict):
            mem = img["peak_mb"] / max(feat["peak_mb"], 1e-6)
            print(f"{pairs} pairs — peak memory image/feature: {mem:.2f}  (target ≤ 1.10: "
                  f"{'met' if mem <= 1.1 else 'MISSED'})")
            share = feat["loss_part_s"] / feat["step_s"]
            print(f"{pairs} pairs — flow/warp/loss share (feature): {share:.1%}  (target < 10%: "
                  f"{'met' if share < 0.1 else 'MISSED'})")
        if isinstance(img, dict) and isinstance(whole, dict):
            print(f"{pairs} pairs — image in bands vs whole maps: memory {img['peak_mb'] / whole['peak_mb']:.2f}×, "
                  f"step time {img['step_s'] / whole['step_s']:.2f}×  (target ≤ 1.10: "
                  f"{'met' if img['step_s'] <= 1.1 * whole['step_s'] else 'MISSED'})")


def sweep(args: argparse.Namespace, amp: str) -> None:
    """Cost against work: every crop size × pairs per device, for the banded image loss and the
    feature-grid loss, each in a fresh process; a table and a PNG (log-log) plot."""
    rows = []
    for res in ("image", "feature"):
        for size in SWEEP_SIZES:
            for pairs in SWEEP_PAIRS:
                cmd = ["--only", res, "--device", args.device, "--arch", args.arch, "--size", *map(str, size),
                       "--pairs", str(pairs), "--amp", amp, "--steps", str(args.steps)]
                try:
                    r = run_child(__file__, cmd)
                except subprocess.CalledProcessError as exc:
                    r = {"error": ((exc.stderr or "").strip().splitlines() or [f"exit {exc.returncode}"])[-1][:60]}
                rows.append((res, size, pairs, r))
                print(f"{res:<8} {size[0]:>4}×{size[1]:<5} {pairs} pair(s): " + (
                    r["error"] if "error" in r else f"{r['step_s']:.3f} s/step, {r['peak_mb']:.0f} MiB"), flush=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for res, marker in (("image", "o"), ("feature", "s")):
        pts = [(s[0] * s[1] * p, r) for rr, s, p, r in rows if rr == res and "error" not in r]
        for ax, key, label in ((axes[0], "step_s", "step time (s)"), (axes[1], "peak_mb", "peak memory (MiB)")):
            ax.loglog([x for x, _ in pts], [r[key] for _, r in pts], marker, label=f"loss at {res} resolution")
            ax.set_xlabel("pixels per step (crop area × pairs)")
            ax.set_ylabel(label)
            ax.legend()
    fig.suptitle(f"FlowE step, {args.arch} OS8, {args.device}, amp {amp}")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
