"""Geometry in fp32 whatever the autocast state.

The trainer runs the objective under bf16 autocast on GPU. bf16 keeps 8 significant bits: pixel
coordinates above 512 are 4 px apart, so a flow composition or a warp grid computed in bf16 moves
correspondences by pixels (FlowE's T by 3.7 px on average at 512×1024). Autocast casts matmul,
bmm and einsum to bf16 on CPU as on CUDA, so the CPU tests see the same failure.

Everything that turns flow into coordinates — ``view_flow``, ``render_view``, ``warp``/``sample_at``,
forward–backward occlusion, RAFT, the cross-pixel sampling grid — and the losses' reductions run
inside :func:`fp32_geometry`, with half-precision inputs cast up by :func:`at_least_fp32`. The
network around them keeps running in bf16: only the geometry and the loss are fp32.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

# Device types whose autocast state we switch off; the trainer uses "cuda" on GPU, the tests "cpu".
AUTOCAST_DEVICES = ("cpu", "cuda")
HALF_DTYPES = (torch.float16, torch.bfloat16)

Fn = TypeVar("Fn", bound=Callable[..., Any])


@contextlib.contextmanager
def fp32_geometry() -> Iterator[None]:
    """Autocast off (on every device type where it is on) for the block; a no-op otherwise.

    Usable as a decorator too. It does not cast tensors that already are bf16: use
    :func:`at_least_fp32` on the inputs.
    """
    with contextlib.ExitStack() as stack:
        for device_type in AUTOCAST_DEVICES:
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 → fp32; fp32/fp64 and integer/bool tensors unchanged (float64 tests stay float64)."""
    return x.float() if x.dtype in HALF_DTYPES else x


def fp32(fn: Fn) -> Fn:
    """Decorator: run ``fn`` in :func:`fp32_geometry` with its half-precision tensor arguments cast
    to fp32, so a loss or a geometric op returns fp32 whatever autocast its caller runs under."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cast = lambda v: at_least_fp32(v) if isinstance(v, torch.Tensor) else v  # noqa: E731
        with fp32_geometry():
            return fn(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


__all__ = ["AUTOCAST_DEVICES", "at_least_fp32", "fp32", "fp32_geometry"]
