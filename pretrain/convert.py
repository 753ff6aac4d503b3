"""Checkpoint conversion between flowssl, torchvision, detectron2 and MMSegmentation.

The encoder is a torchvision ResNet, so the torchvision names are the hub every conversion goes
through: read any supported layout → torchvision state dict → write the target framework's names.
Nothing pickled is ever executed: PyTorch files load with ``weights_only=True`` and detectron2
pickles with an unpickler that only rebuilds numpy arrays.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .fileio import CheckpointError, NumpyOnlyUnpickler, atomic_path, load_checkpoint, sha256_file, write_text_atomic
from .readout import arch_of_blocks, d2_arch_error

# Known layouts: name → prefixes the encoder's keys may carry (first match wins).
LAYOUTS: dict[str, tuple[str, ...]] = {
    "flowssl": ("",),                                        # the "encoder" entry of a flowssl checkpoint
    "torchvision": ("", "module."),
    "moco": ("module.encoder_q.", "encoder_q."),
    "byol": ("online_network.encoder.", "module.online_network.encoder.", "net.", "backbone.", "module.backbone."),
    "simclr": ("module.", "encoder.", "backbone.", "module.encoder.", ""),
    "detectron2": ("",),
}
TARGETS = ("torchvision", "detectron2", "mmseg")

# Names copied from a checkpoint into configs, sidecars and tables (method, arch): plain words only, so
# no YAML, Markdown or LaTeX syntax can ride along (issue 20: a method name carrying a YAML tag).
SAFE_NAME = re.compile(r"[A-Za-z0-9_]+")
CONFIG_NAME = re.compile(r"[A-Za-z0-9_.-]+")
OUTPUT_STRIDES = (8, 16, 32)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)


def checked_meta(path: Path | str, meta: Any) -> dict[str, Any]:
    """The metadata of a checkpoint someone else may have written, reduced to the keys flowssl uses and
    checked, because it is copied into detectron2 YAML, sidecars and tables. Other keys are dropped
    (a pretraining checkpoint's ``config`` text among them); a bad value is refused naming the key."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: its metadata is a {type(meta).__name__}, expected a dict")

    def bad(key: str, want: str) -> CheckpointError:
        shown = repr(meta[key])
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return CheckpointError(f"checkpoint {path}: metadata '{key}' is {shown}, expected {want}; refusing to copy "
                               "it into configs (re-save the weights with plain metadata or as a plain state dict)")

    out: dict[str, Any] = {}
    for key in ("method", "arch"):
        if key in meta:
            if not (isinstance(meta[key], str) and SAFE_NAME.fullmatch(meta[key])):
                raise bad(key, f"a plain name ({SAFE_NAME.pattern})")
            out[key] = meta[key]
    if meta.get("config_name") is not None:
        if not (isinstance(meta["config_name"], str) and CONFIG_NAME.fullmatch(meta["config_name"])):
            raise bad("config_name", f"a file stem ({CONFIG_NAME.pattern})")
        out["config_name"] = meta["config_name"]
    if "output_stride" in meta:
        if not (isinstance(meta["output_stride"], int) and not isinstance(meta["output_stride"], bool)
                and meta["output_stride"] in OUTPUT_STRIDES):
            raise bad("output_stride", f"one of {OUTPUT_STRIDES}")
        out["output_stride"] = meta["output_stride"]
    for key in ("pixel_mean", "pixel_std"):
        if key in meta:
            v = meta[key]
            if not (isinstance(v, list | tuple) and len(v) == 3 and all(_is_number(x) for x in v)
                    and 0 <= min(v) and max(v) <= 1 and (key == "pixel_mean" or min(v) > 0)):
                raise bad(key, "three numbers on the 0-1 scale (RGB)")
            out[key] = [float(x) for x in v]
    if "input_format" in meta:
        if meta["input_format"] not in ("RGB", "BGR"):
            raise bad("input_format", "'RGB' or 'BGR'")
        out["input_format"] = meta["input_format"]
    return out


@dataclass
class Encoder:
    """A torchvision-named ResNet state dict and what is known about it."""

    state: dict[str, torch.Tensor]
    layout: str
    prefix: str
    meta: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    @property
    def arch(self) -> str:
        """The metadata's arch, else the one whose blocks per stage, block type (a third conv: bottleneck)
        and stem width the weights have (ResNet-14 and the narrow ResNet-10 both have one block per
        stage), else a description of the unknown layout."""
        blocks = tuple(len({k.split(".")[1] for k in self.state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
        block = "bottleneck" if any(k.endswith(".conv3.weight") for k in self.state) else "basic"
        stem = self.state.get("conv1.weight")
        width = int(stem.shape[0]) if stem is not None else None
        return (self.meta.get("arch") or arch_of_blocks(blocks, block, width)
                or f"{blocks} ({block} blocks, stem width {width})")


# -- reading -----------------------------------------------------------------------------------------

def _read_raw(path: Path) -> tuple[dict[str, Any], bool]:
    """(object, is_detectron2_pickle)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".pkl":
        try:
            with open(path, "rb") as f:
                obj = NumpyOnlyUnpickler(f, encoding="latin1").load()
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable detectron2 pickle ({exc})") from exc
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict")
        return obj, True
    return load_checkpoint(path), False


def _unwrap(obj: dict[str, Any]) -> dict[str, Any]:
    """Peel the usual wrappers: {"state_dict": ...}, {"model": ...}."""
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], dict) and not any(torch.is_tensor(v) for v in obj.values()):
            return obj[key]
    return obj


def d2_to_torchvision_name(name: str) -> str | None:
    """Inverse of :func:`torchvision_to_d2_name` (None for names outside the ResNet trunk)."""
    if name.startswith("stem.conv1.norm."):
        return "bn1." + name[len("stem.conv1.norm."):]
    if name.startswith("stem.conv1."):
        return "conv1." + name[len("stem.conv1."):]
    m = re.match(r"^res(\d)\.(\d+)\.(conv\d|shortcut)(\.norm)?\.(\w+)$", name)
    if not m:
        return None
    stage, block, conv, norm, leaf = m.groups()
    layer = f"layer{int(stage) - 1}.{block}"
    if conv == "shortcut":
        return f"{layer}.downsample.{1 if norm else 0}.{leaf}"
    return f"{layer}.{'bn' + conv[-1] if norm else conv}.{leaf}"


def torchvision_to_d2_name(name: str) -> str | None:
    """torchvision ResNet name → detectron2 ResNet name; None for ``num_batches_tracked``."""
    if name.endswith("num_batches_tracked"):
        return None
    if name.startswith("conv1."):
        return "stem." + name
    if name.startswith("bn1."):
        return "stem.conv1.norm." + name[len("bn1."):]
    m = re.match(r"^layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)$", name)
    if not m:
        raise KeyError(f"'{name}' is not a torchvision ResNet parameter name")
    layer, block, part, leaf = m.groups()
    stage = f"res{int(layer) + 1}.{block}"
    if part.startswith("conv"):
        return f"{stage}.{part}.{leaf}"
    if part.startswith("bn"):
        return f"{stage}.conv{part[-1]}.norm.{leaf}"
    return f"{stage}.shortcut.{leaf}" if part.endswith("0") else f"{stage}.shortcut.norm.{leaf}"


def _is_trunk(name: str) -> bool:
    return bool(re.match(r"^(conv1|bn1)\.|^layer[1-4]\.\d+\.(conv\d|bn\d|downsample\.[01])\.", name))


def read_encoder(path: str | Path, source: str = "auto", drop_heads: bool = False) -> Encoder:
    """Read any supported checkpoint as a torchvision-named encoder; say which layout was found."""
    path = Path(path)
    obj, is_pkl = _read_raw(path)
    if source not in ("auto", *LAYOUTS):
        raise CheckpointError(f"unknown --from '{source}'; choose auto or one of {sorted(LAYOUTS)}")
    meta: dict[str, Any] = {}
    if is_pkl or source == "detectron2":
        weights = obj.get("model", obj)
        state = {}
        for k, v in weights.items():
            tv = d2_to_torchvision_name(k)
            if tv is not None:
                state[tv] = torch.as_tensor(np.asarray(v))
        extra = sorted(k for k in weights if d2_to_torchvision_name(k) is None)
        enc = Encoder(state, "detectron2", "", checked_meta(path, obj.get("__flowssl_meta__", {})), extra)
    elif "encoder" in obj and isinstance(obj["encoder"], dict) and "meta" in obj:  # flowssl checkpoint
        enc = Encoder(dict(obj["encoder"]), "flowssl", "", checked_meta(path, obj["meta"]))
    else:
        weights = _unwrap(obj)
        if not isinstance(weights, dict) or not any(torch.is_tensor(v) for v in weights.values()):
            raise CheckpointError(f"{path} holds no tensors under any known key (state_dict, model, encoder)")
        names = [source] if source not in ("auto", "flowssl") else ["torchvision", "moco", "byol", "simclr"]
        found = None
        for layout in names:
            for prefix in LAYOUTS[layout]:
                if f"{prefix}conv1.weight" in weights and f"{prefix}layer1.0.conv1.weight" in weights:
                    found = (layout, prefix)
                    break
            if found:
                break
        if found is None:
            sample = ", ".join(list(weights)[:5])
            raise CheckpointError(f"{path}: no ResNet trunk found (looked for '<prefix>conv1.weight' with prefixes of "
                                  f"{names}); first keys: {sample}. Pass --from to name the layout.")
        layout, prefix = found
        state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix) and _is_trunk(k[len(prefix):])}
        extra = sorted(k for k in weights if not (k.startswith(prefix) and _is_trunk(k[len(prefix):])))
        enc = Encoder(state, layout, prefix, meta, extra)
    if enc.dropped and not drop_heads:
        shown = ", ".join(enc.dropped[:8]) + (" ..." if len(enc.dropped) > 8 else "")
        raise CheckpointError(f"{path} ({enc.layout} layout) has {len(enc.dropped)} key(s) outside the ResNet trunk: "
                              f"{shown}. Pass --drop-heads to leave them out.")
    return enc


def decoder_config(state: dict[str, torch.Tensor], path: str | Path) -> dict[str, Any]:
    """The :class:`~pretrain.models.decoder.SpatialDecoder` arguments of a decoder state dict, read off
    its shapes: ``channels`` (its blocks' output), ``hidden_factor`` (bottleneck width / (channels / 4))
    and ``stages`` (one more than its blocks, ending at layer4)."""
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
    try:
        channels = int(state["blocks.0.conv3.weight"].shape[0])
        width = int(state["blocks.0.conv1.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(f"{path}: the decoder weights lack {exc}; not a flowssl spatial decoder") from None
    return {"channels": channels, "hidden_factor": width / (channels // 4),
            "stages": tuple(f"layer{i}" for i in range(4 - len(blocks), 5))}


def read_decoder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """PooDLe's spatial decoder — the online one, which its authors read out through — from a flowssl
    pretraining checkpoint (``model['decoder.*']``) or a file ``flowssl convert --to mmseg
    --with-decoder`` wrote (``decoder.state_dict``). Returns its state dict and :func:`decoder_config`."""
    path = Path(path)
    obj, is_pkl = _read_raw(path)
    state: dict[str, torch.Tensor] = {}
    if not is_pkl and isinstance(obj.get("decoder"), dict) and isinstance(obj["decoder"].get("state_dict"), dict):
        state = dict(obj["decoder"]["state_dict"])
    elif not is_pkl and isinstance(obj.get("model"), dict):
        state = {k.removeprefix("decoder."): v for k, v in obj["model"].items() if k.startswith("decoder.")}
    if not state:
        raise CheckpointError(f"{path} holds no spatial decoder (only PooDLe pretraining checkpoints have one); "
                              "read out the encoder alone (no --with-decoder, backbone decoder=None)")
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"decoder '{k}' in {path} contains NaN/Inf: the source checkpoint is broken")
    return state, decoder_config(state, path)


def check_complete(enc: Encoder, allow_missing: bool = False) -> list[str]:
    """Compare with a torchvision ResNet of the same depth; missing keys are an error unless allowed."""
    from .models.encoder import ARCHS, ResNetEncoder

    if enc.arch not in ARCHS:
        raise CheckpointError(f"unsupported ResNet layout {enc.arch}; supported: {sorted(ARCHS)}")
    reference = ResNetEncoder(enc.arch, 32).state_dict()
    expected = set(reference)
    have = set(enc.state)
    wrong = [k for k in sorted(have & expected) if tuple(enc.state[k].shape) != tuple(reference[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{len(wrong)} tensor(s) do not have the shapes of a torchvision {enc.arch}, e.g. '{k}' is "
            f"{list(enc.state[k].shape)}, expected {list(reference[k].shape)}. The keys match but the network does "
            "not: a ResNeXt (grouped conv2) or Wide ResNet (wider bottlenecks) is not supported by the "
            "readout backbones; convert a plain ResNet.")
    missing = sorted(k for k in expected - have if not k.endswith("num_batches_tracked"))
    unexpected = sorted(have - expected)
    if unexpected:
        raise CheckpointError(f"unexpected trunk keys for {enc.arch}: {unexpected[:8]}")
    if missing and not allow_missing:
        raise CheckpointError(f"{len(missing)} {enc.arch} key(s) missing: {missing[:8]}... "
                              "Pass --allow-missing to write the checkpoint anyway.")
    for k, v in enc.state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"'{k}' contains NaN/Inf: the source checkpoint is broken")
    return missing


# -- writing -----------------------------------------------------------------------------------------

def to_detectron2(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in state.items():
        name = torchvision_to_d2_name(k)
        if name is not None:
            out[name] = v.detach().cpu().numpy()
    return out


def _same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file (through links, ``..`` or a relative path)."""
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _check_outputs(src: Path, outputs: list[Path], force: bool) -> None:
    """Refuse to write over the input (ever) or over an existing file (unless ``force``): a training
    checkpoint replaced by a bare state dict, or a hand-edited ``.yaml`` replaced by the fragment,
    cannot be recovered."""
    for p in outputs:
        if _same_file(p, src):
            raise FileExistsError(f"output {p} is the input checkpoint {src}: converting would replace it "
                                  "(even with --force); choose another -o")
    if not force:
        for p in outputs:
            if p.exists():
                raise FileExistsError(f"{p} exists; pass --force to replace it, or choose another -o "
                                      f"(convert writes {', '.join(q.name for q in outputs)})")


# What a framework adapter adds to a conversion (its config keys, its own files): given the encoder
# and the output path, sidecar entries and {path: text} files to write beside the weights.
FrameworkFiles = Callable[[Encoder, Path], tuple[dict[str, Any], dict[Path, str]]]


def convert(src: str | Path, target: str, out: str | Path, source: str = "auto", allow_missing: bool = False,
            drop_heads: bool = False, with_decoder: bool = False, force: bool = False,
            framework_files: FrameworkFiles | None = None) -> dict[str, Any]:
    """Convert ``src`` to ``target`` at ``out`` (atomically) plus ``out.json``; returns the sidecar. An
    existing output file is replaced only with ``force``; the input never is.

    ``framework_files``: the adapter's part (``d2_plugin.export.detectron2_files`` writes the
    ``MODEL.FLOWSSL`` hints and the stock-detectron2 ``.yaml`` fragment); the library knows no
    framework's config keys. ``d2_plugin.export.convert`` passes it for ``--to detectron2``.

    ``with_decoder`` (mmseg only): also export PooDLe's spatial decoder, for its authors' protocol of
    reading out through it (``FlowsslResNet(decoder=...)``); the default exports the encoder alone."""
    if target not in TARGETS:
        raise CheckpointError(f"unknown --to '{target}'; choose one of {TARGETS}")
    if with_decoder and target != "mmseg":
        raise CheckpointError(f"--with-decoder writes MMSegmentation files only (--to mmseg), not --to {target}")
    decoder = read_decoder(src) if with_decoder else None
    out = Path(out)
    if target == "detectron2" and out.suffix == ".yaml":
        raise CheckpointError(f"output {out}: a detectron2 checkpoint is a .pkl (its config fragment gets the .yaml)")
    sidecar_path = Path(f"{out}.json")
    _check_outputs(Path(src), [out, sidecar_path], force)  # before reading: fail fast
    enc = read_encoder(src, source, drop_heads)
    missing = check_complete(enc, allow_missing)
    if target == "detectron2" and d2_arch_error(enc.arch):
        raise CheckpointError(f"--to detectron2: {d2_arch_error(enc.arch)}")
    extra_sidecar, extra_files = framework_files(enc, out) if framework_files is not None else ({}, {})
    if extra_files:  # a hand-written X.yaml beside X.pkl is an output too
        _check_outputs(Path(src), [out, sidecar_path, *extra_files], force)
    with atomic_path(out) as tmp:
        if target == "detectron2":
            payload = {"model": to_detectron2(enc.state), "__author__": "flowssl", "matching_heuristics": True,
                       "__flowssl_meta__": {**enc.meta, "arch": enc.arch}}
            with open(tmp, "wb") as f:
                pickle.dump(payload, f, protocol=4)
            n_out = len(payload["model"])
        elif target == "mmseg":
            # mmseg's ResNet (style='pytorch', plain stem) uses torchvision's names; init_cfg=Pretrained
            # reads the "state_dict" entry.
            meta = {**enc.meta, "arch": enc.arch, "converted_by": "flowssl",
                    "readout": "encoder+decoder" if decoder else "encoder"}
            payload = {"state_dict": enc.state, "meta": meta}
            if decoder:
                payload["decoder"] = {"state_dict": decoder[0], "config": decoder[1]}
            torch.save(payload, tmp)
            n_out = len(enc.state) + (len(decoder[0]) if decoder else 0)
        else:
            torch.save(enc.state, tmp)
            n_out = len(enc.state)
    sidecar = {
        "source": str(src), "source_layout": enc.layout, "source_prefix": enc.prefix, "target": target,
        "method": enc.meta.get("method", "unknown"), "config_name": enc.meta.get("config_name"),
        "arch": enc.arch, "output_stride": enc.meta.get("output_stride", 32),
        "keys_in": len(enc.state), "keys_out": n_out, "dropped_keys": len(enc.dropped), "missing_keys": missing,
        "sha256": sha256_file(out), "decoder": dict(decoder[1], stages=list(decoder[1]["stages"])) if decoder else None,
    }
    sidecar.update(extra_sidecar)
    for path, text in extra_files.items():
        write_text_atomic(text, path)
    write_text_atomic(json.dumps(sidecar, indent=2), sidecar_path)
    return sidecar


__all__ = ["LAYOUTS", "SAFE_NAME", "TARGETS", "Encoder", "check_complete", "checked_meta", "convert",
           "d2_to_torchvision_name", "decoder_config", "read_decoder",
           "read_encoder", "to_detectron2", "torchvision_to_d2_name"]
