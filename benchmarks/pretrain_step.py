"""FlowE training-step cost of the two loss resolutions, in one run, as ratios.

Fixed setting (FlowE §4.2 per GPU, at half resolution): ResNet-50 OS8, 2 frame pairs of 256×512,
flow given (so the flow network is not timed), one optimiser step. Prints time per step, the share
of the flow-composition + warp + loss part, and peak memory for ``image`` (Algorithm 1) and
``feature`` (stride-8) loss resolutions. Targets: feature ≤ 0.5× the memory of image, and the
flow/warp/loss part < 10% of the step. It reports; it never fails.

    python benchmarks/pretrain_step.py [--device cuda] [--arch resnet14] [--steps 3]

On CPU, peak memory is the process's peak RSS above its level after building the model, measured
in a fresh subprocess per setting; on CUDA it is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_mb, run_child  # noqa: E402


def measure(resolution: str, arch: str, size: tuple[int, int], steps: int, device: str) -> dict[str, float]:
    from pretrain.objectives import flowe as flowe_mod
    from pretrain.objectives.flowe import FlowE
    from pretrain.optim import build_optimizer

    torch.manual_seed(0)
    dev = torch.device(device)
    model = FlowE({"arch": arch, "output_stride": 8}, loss_resolution=resolution).to(dev).train()
    opt = build_optimizer(model, {"type": "LARS", "lr": 0.1, "weight_decay": 1e-6})
    b, (h, w) = 2, size
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(b, 2, 3).contiguous()
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0] = 4.0
    batch = {"view1": torch.randn(b, 3, h, w), "view2": torch.randn(b, 3, h, w), "affine1": eye, "affine2": eye,
             "flow_fw": flow, "flow_bw": -flow, "valid_fw": torch.ones(b, h, w, dtype=torch.bool),
             "valid_bw": torch.ones(b, h, w, dtype=torch.bool)}
    batch = {k: v.to(dev) for k, v in batch.items()}

    part = {"t": 0.0}
    inner = flowe_mod.equivariance_loss

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(*args, **kwargs):
        sync()
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        sync()
        part["t"] += time.perf_counter() - t0
        return out

    flowe_mod.equivariance_loss = timed
    base = torch.cuda.memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_mb(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        model.after_step(1, 10)

    step()  # warm-up
    part["t"] = 0.0
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    total = (time.perf_counter() - t0) / steps
    peak = peak_mb(dev)
    return {"step_s": total, "loss_part_s": part["t"] / steps, "peak_mb": peak - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 512))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", choices=("image", "feature"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:  # child process: one setting, JSON on stdout
        print(json.dumps(measure(args.only, args.arch, tuple(args.size), args.steps, args.device)))
        return
    rows = {}
    for res in ("image", "feature"):
        rows[res] = run_child(__file__, ["--only", res, "--device", args.device, "--arch", args.arch,
                                         "--size", *map(str, args.size), "--steps", str(args.steps)])
    print(f"FlowE step, {args.arch} OS8, 2 pairs of {args.size[0]}×{args.size[1]}, {args.device}, flow given")
    print(f"{'loss resolution':<16}{'step (s)':>10}{'flow+warp+loss (s)':>20}{'share':>8}{'peak (MiB)':>12}")
    for res, r in rows.items():
        print(f"{res:<16}{r['step_s']:>10.3f}{r['loss_part_s']:>20.4f}{r['loss_part_s'] / r['step_s']:>8.1%}"
              f"{r['peak_mb']:>12.0f}")
    mem = rows["feature"]["peak_mb"] / max(rows["image"]["peak_mb"], 1e-6)
    share = rows["feature"]["loss_part_s"] / rows["feature"]["step_s"]
    print(f"memory ratio feature/image: {mem:.2f}  (target ≤ 0.50: {'met' if mem <= 0.5 else 'MISSED'})")
    print(f"time ratio feature/image:   {rows['feature']['step_s'] / rows['image']['step_s']:.2f}")
    print(f"flow/warp/loss share (feature): {share:.1%}  (target < 10%: {'met' if share < 0.1 else 'MISSED'})")


if __name__ == "__main__":
    main()
