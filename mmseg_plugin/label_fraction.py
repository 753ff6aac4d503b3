"""Limited labels (FlowE Table 6): train a readout on a deterministic fraction of the labelled images.

``LabelFractionDataset`` wraps any training dataset config and keeps ``max(1, round(fraction · N))``
of its N samples by the rule detectron2's readout uses too (:mod:`pretrain.readout`: samples ranked by
``sha256("<seed>:<basename of img_path>")``): for the same images, seed and fraction both frameworks
train on the same images. Which ones never depends on the data root, the listing order, the number of
workers or GPUs: every rank computes the same subset, and a rerun on another machine picks the same
images. For one seed the 1 % subset lies inside the 10 % one, which lies inside 100 % — the fractions
of a Table 6 row differ only in how many labels they add.

The chosen image files are written (atomically, by the main process) to ``list_file``, or by
:class:`LabelSubsetHook` to ``<work_dir>/label_subset.txt`` when ``list_file`` is not given — the
dataset is built before it could know the work dir. The evaluation set is never wrapped.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmseg.registry import DATASETS, HOOKS

from pretrain.fileio import write_text_atomic
from pretrain.readout import LIST_FILE_NAME, check_fraction, select_subset, subset_list_text


def _build(cfg: dict) -> Any:
    """``DATASETS.build``; mmengine's error for a folder without samples ("need at least one array to
    concatenate") is rephrased with the folder to check."""
    try:
        return DATASETS.build(copy.deepcopy(cfg))
    except ValueError as exc:
        where = f"data_root={cfg.get('data_root')!r}, data_prefix={cfg.get('data_prefix')!r}"
        raise ValueError(f"LabelFractionDataset: the wrapped {cfg.get('type')} ({where}) could not be built: {exc}. "
                         "If it has no samples, check its data_root, data_prefix and ann_file") from exc


@DATASETS.register_module()
class LabelFractionDataset:
    """A deterministic ``fraction`` of ``dataset``'s samples (see the module docstring).

    Args:
        dataset: the wrapped training dataset, a config dict built through mmseg's ``DATASETS``
            (``BDD100KDataset``, ``CityscapesDataset``, a ``ConcatDataset``...) or a built dataset.
        fraction: share of the labelled images kept, in (0, 1]; 1.0 keeps all (and still lists them).
        seed: which subset; the same seed always gives the same files.
        list_file: where the kept image paths are written, one per line; ``None``: ``LabelSubsetHook``
            writes ``<work_dir>/label_subset.txt``.
        lazy_init: defer loading the annotations until ``full_init`` (mmengine's wrapper convention).
    """

    def __init__(self, dataset: dict | Any, fraction: float, seed: int = 0, list_file: str | None = None,
                 lazy_init: bool = False, **unknown: Any) -> None:
        if unknown:  # typically --cfg-options train_dataloader.dataset.data_root=... on a Table 6 config
            names = ", ".join(sorted(unknown))
            raise TypeError(f"LabelFractionDataset got {names}, which belong to the wrapped dataset: set "
                            f"train_dataloader.dataset.dataset.<{names.split(', ')[0]}> instead "
                            "(LabelFractionDataset takes dataset, fraction, seed, list_file)")
        self.fraction = check_fraction(fraction, "LabelFractionDataset fraction")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"LabelFractionDataset seed must be an integer, got {seed!r}")
        self.seed, self.list_file = seed, list_file
        self.dataset = _build(dataset) if isinstance(dataset, dict) else dataset
        self._metainfo = self.dataset.metainfo
        self.indices: list[int] = []
        self.files: list[str] = []
        self.total = 0
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(self._metainfo)

    def full_init(self) -> None:
        """Load the wrapped dataset's annotations, choose the subset and write its list."""
        if self._fully_initialized:
            return
        if hasattr(self.dataset, "full_init"):
            self.dataset.full_init()
        self.total = len(self.dataset)
        if self.total == 0:
            raise ValueError("LabelFractionDataset: the wrapped dataset has no samples; check its data_root, "
                             "data_prefix and ann_file")
        paths = [str(self.dataset.get_data_info(i)["img_path"]) for i in range(self.total)]
        self.indices = select_subset(paths, self.fraction, self.seed)
        self.files = [paths[i] for i in self.indices]
        self._fully_initialized = True
        if self.list_file is not None:
            self.write_list(self.list_file)

    def write_list(self, path: str | os.PathLike[str]) -> Path:
        """Write the kept image files, one per line (main process only; atomically)."""
        self.full_init()
        if is_main_process():
            source = type(self.dataset).__name__
            write_text_atomic(subset_list_text(self.files, self.total, self.fraction, self.seed, source), path)
        return Path(path)

    def get_data_info(self, idx: int) -> dict:
        self.full_init()
        return self.dataset.get_data_info(self.indices[idx])

    def __getitem__(self, idx: int) -> Any:
        self.full_init()
        return self.dataset[self.indices[idx]]

    def __len__(self) -> int:
        self.full_init()
        return len(self.indices)

    def __repr__(self) -> str:
        return (f"LabelFractionDataset(fraction={self.fraction}, seed={self.seed}, "
                f"{len(self.indices)} of {self.total} samples, dataset={type(self.dataset).__name__})")


def find_label_fraction(dataset: Any) -> LabelFractionDataset | None:
    """The ``LabelFractionDataset`` in a (possibly wrapped) training dataset, if any."""
    seen = 0
    while dataset is not None and seen < 8:  # RepeatDataset(LabelFractionDataset(...)) and the like
        if isinstance(dataset, LabelFractionDataset):
            return dataset
        dataset, seen = getattr(dataset, "dataset", None), seen + 1
    return None


@HOOKS.register_module()
class LabelSubsetHook(Hook):
    """Writes the label subset's file list to ``<work_dir>/label_subset.txt`` before training when
    the ``LabelFractionDataset`` was given no ``list_file`` (the Table 6 configs, run by mmseg's own
    ``tools/train.py``, only learn the work dir from the runner)."""

    priority = "VERY_LOW"

    def before_train(self, runner: Any) -> None:
        subset = find_label_fraction(runner.train_dataloader.dataset)
        if subset is None:
            raise ValueError("LabelSubsetHook is in custom_hooks but train_dataloader.dataset is not a "
                             "LabelFractionDataset; remove the hook or wrap the dataset")
        if subset.list_file is None:
            path = subset.write_list(Path(runner.work_dir) / LIST_FILE_NAME)
            runner.logger.info(f"label subset: {len(subset)} of {subset.total} training images "
                               f"(fraction {subset.fraction}, seed {subset.seed}) listed in {path}")
