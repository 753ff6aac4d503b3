"""``FlowsslResNet``: mmseg's ``ResNet`` with the flowssl encoder's layout, a readout switch, and
optionally PooDLe's spatial decoder on top (its authors read PooDLe out through it)."""

from __future__ import annotations

from typing import Any

import torch
from mmengine.logging import print_log
from mmseg.models.backbones import ResNet
from mmseg.models.backbones.resnet import BasicBlock, Bottleneck
from mmseg.registry import MODELS

from pretrain.readout import ARCH_DEPTH, ARCH_SPECS

# torchvision's dilation pattern per output stride, expressed in mmseg's terms (with
# contract_dilation=True the first block of a dilated stage uses half the dilation, as torchvision).
_LAYOUT = {8: ((1, 2, 1, 1), (1, 1, 2, 4)), 16: ((1, 2, 2, 1), (1, 1, 1, 2)), 32: ((1, 2, 2, 2), (1, 1, 1, 1))}


@MODELS.register_module()
class FlowsslResNet(ResNet):
    """mmseg ResNet (``style='pytorch'``, plain 7×7 stem — not ResNetV1c) matching
    :class:`pretrain.models.ResNetEncoder` for the same ``arch`` and ``output_stride`` (block type,
    blocks and widths from :data:`pretrain.readout.ARCH_SPECS`; layer4 has ``ARCH_SPECS[arch].out_channels``,
    the readout head's ``in_channels``).

    ``frozen=True`` is the paper's readout: stem and all four stages frozen, BN in eval mode (running
    statistics never updated) and no graph kept through the backbone. ``frozen=False`` fine-tunes
    everything (BN or SyncBN through ``norm_cfg``). ``checkpoint`` may be a flowssl pretraining
    checkpoint or any file ``flowssl convert`` reads; it is converted on load, and one log line says what
    was loaded (file, layout, method, arch, tensor counts).

    ``decoder=dict(channels=…, hidden_factor=…)``: PooDLe's protocol — its
    :class:`~pretrain.models.decoder.SpatialDecoder` over layer2–layer4 (PooDLe pretrains a stride-32
    encoder, ``output_stride=32``), loaded from ``checkpoint`` (a PooDLe pretraining checkpoint, or
    ``flowssl convert --to mmseg --with-decoder``) and frozen with the encoder. Its stride-8 map is
    appended to the outputs (``in_index=4``). ``None`` (default): the encoder alone, as FlowE's readouts.
    """

    # mmseg keys its layouts by depth; the widths (stem_channels = base_channels) come from the arch
    arch_settings = {**ResNet.arch_settings, **{s.depth: ({"bottleneck": Bottleneck, "basic": BasicBlock}[s.block],
                                                          s.blocks) for s in ARCH_SPECS.values()}}

    def __init__(self, arch: str = "resnet50", output_stride: int = 8, frozen: bool = True,
                 checkpoint: str | None = None, decoder: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if arch not in ARCH_DEPTH:
            raise KeyError(f"unknown arch '{arch}'; choose one of {sorted(ARCH_DEPTH)}")
        strides, dilations = _LAYOUT[output_stride]
        kwargs.setdefault("out_indices", (0, 1, 2, 3))
        if frozen:
            kwargs.update(frozen_stages=4, norm_eval=True)
        width = ARCH_SPECS[arch].width
        super().__init__(depth=ARCH_DEPTH[arch], strides=strides, dilations=dilations, contract_dilation=True,
                         style="pytorch", deep_stem=False, avg_down=False, stem_channels=width, base_channels=width,
                         **kwargs)
        self.frozen, self.flowssl_checkpoint = frozen, checkpoint
        self.decoder = None
        if decoder is not None:
            from pretrain.models.decoder import SpatialDecoder

            if tuple(self.out_indices) != (0, 1, 2, 3):
                raise ValueError(f"backbone decoder reads layer2-layer4: keep out_indices (0, 1, 2, 3), got "
                                 f"{self.out_indices}")
            channels = {f"layer{i + 1}": self.base_channels * 2 ** i * self.block.expansion for i in range(4)}
            self.decoder = SpatialDecoder(channels, **decoder)
            if frozen:
                self.decoder.requires_grad_(False)

    def init_weights(self) -> None:
        if self.flowssl_checkpoint is None:
            super().init_weights()
            return
        from pretrain.convert import check_complete, read_encoder

        enc = read_encoder(self.flowssl_checkpoint, drop_heads=True)
        check_complete(enc)
        missing, unexpected = self.load_state_dict(enc.state, strict=False)
        missing = [k for k in missing if not k.startswith("decoder.")]  # loaded next, from its own entry
        if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
            raise RuntimeError(f"{self.flowssl_checkpoint} does not fit FlowsslResNet: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}; is the arch right?")
        loaded = f"{len(enc.state)} encoder tensors"
        if self.decoder is not None:
            loaded += f" and {self._load_decoder()} decoder tensors"
        print_log(f"FlowsslResNet: loaded {loaded} from {self.flowssl_checkpoint} (layout {enc.layout}, method "
                  f"{enc.meta.get('method', 'unknown')}, arch {enc.arch})", logger="current")
        self._freeze_stages()

    def _load_decoder(self) -> int:
        """Load the spatial decoder from the checkpoint; how many tensors it loaded."""
        from pretrain.convert import decoder_config, read_decoder

        state, found = read_decoder(self.flowssl_checkpoint)
        want = decoder_config(self.decoder.state_dict(), "model.backbone.decoder")
        if found != want:
            raise RuntimeError(f"{self.flowssl_checkpoint} holds a spatial decoder {found}, but "
                               f"model.backbone.decoder builds {want}; set model.backbone.decoder to match")
        self.decoder.load_state_dict(state)
        return len(state)

    def _freeze_stages(self) -> None:
        super()._freeze_stages()
        if getattr(self, "frozen", False) and getattr(self, "decoder", None) is not None:
            self.decoder.eval()
            self.decoder.requires_grad_(False)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = super().forward(x)
        if self.decoder is None:
            return outs
        return (*outs, self.decoder(dict(zip(("layer1", "layer2", "layer3", "layer4"), outs, strict=True))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.frozen:  # readout: nothing to differentiate, keep no activations
            with torch.no_grad():
                return self._forward(x)
        return self._forward(x)
