"""``flowssl bench PLAN``: pretrain (or take) checkpoints, convert each once, run every readout, skip
what already finished, record status, and print the tables.

Layout under the work dir: ``pretrain/<method>/seed<k>/``, ``converted/<method>/seed<k>.{pkl,pth}``,
``results/<method>/<dataset>/<readout>/seed<k>/results.json`` (what ``flowssl tables`` reads),
``status.json``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mmengine.config import Config

from d2_plugin.export import convert  # the library's, plus detectron2's config keys for --to detectron2
from pretrain.config import CONFIG_DIR, ConfigError, load_config, resolve_config
from pretrain.fileio import save_atomic, write_text_atomic

PRESETS = {"tiny": CONFIG_DIR / "bench" / "tiny.py"}


READOUT_KEYS = ("name", "framework", "config", "dataset")
PREDICTION_FILE = "prediction_val0.pt"  # a feature readout's prediction on the first val frame
# framework="probe": the feature readouts of pretrain.probe (no config, no conversion), and their options
PROBE_OPTIONS = {"linear_probe": ("max_iter", "tol"), "knn": ("k", "temperature")}
# method, readout and dataset names become folders under the work dir: plain names only, never a path
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _check_name(value: Any, where: str, path: Path) -> None:
    """Refuse a name that would be a path (``../x``, ``a/b``, ``..``) or empty: the bench writes
    ``results/<method>/<dataset>/<readout>``, and a name with ``..`` lands outside the work dir."""
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value) or ".." in value or value == ".":
        raise ConfigError(f"plan {path}: {where} {value!r} is not a plain name; use letters, digits, '_', '.' and "
                          "'-' only (no '/', no '..'): it names a folder under the work dir")


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[IO[str]]:
    """Send everything written to stdout/stderr — Python, mmengine's logger, C++ — to ``log`` for
    the block (at the file-descriptor level), and yield a stream on the real terminal for one
    progress bar. A person sees progress and the table; the frameworks' hook tables and config
    dumps are in the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    with open(log, "a", buffering=1) as f:
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
        try:  # Python-level too: sys.stdout may not be fd 1 (pytest, notebooks)
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield terminal
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


def _progress_hook(bar: Any) -> Any:
    """An mmengine hook that moves ``bar`` once per training iteration."""
    from mmengine.hooks import Hook

    class _Progress(Hook):
        priority = "VERY_LOW"

        def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
            bar.update(1)

    return _Progress()


def check_plan(plan: Config, path: Path) -> None:
    """A plan's shape, checked before any compute is spent; each error names the key to fix."""
    for key in ("methods", "readouts", "seeds"):
        if key not in plan:
            raise ConfigError(f"plan {path} lacks '{key}' (see configs/bench/tiny.py for the layout)")
    if not isinstance(plan.methods, dict):
        raise ConfigError(f"plan {path}: 'methods' must be a dict name → pretrain config, "
                          f"got {type(plan.methods).__name__}")
    if not isinstance(plan.get("checkpoints", {}), dict):
        raise ConfigError(f"plan {path}: 'checkpoints' must be a dict name → checkpoint file")
    if not isinstance(plan.seeds, (list, tuple)) or not all(isinstance(s, int) for s in plan.seeds):
        raise ConfigError(f"plan {path}: 'seeds' must be a list of integers, got {plan.seeds!r}")
    if not isinstance(plan.readouts, (list, tuple)):
        raise ConfigError(f"plan {path}: 'readouts' must be a list of dicts")
    for key in ("methods", "checkpoints"):
        for method in plan.get(key, {}):
            _check_name(method, f"{key} key", path)
    for i, spec in enumerate(plan.readouts):
        fraction = spec.get("label_fraction", 1.0) if isinstance(spec, dict) else 1.0
        if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ConfigError(f"plan {path}: readouts[{i}].label_fraction must be in (0, 1], got {fraction!r}")
        features = isinstance(spec, dict) and spec.get("framework") == "probe"  # a feature readout has no config
        missing = [k for k in READOUT_KEYS if (not isinstance(spec, dict) or k not in spec)
                   and not (features and k == "config")]
        if missing:
            raise ConfigError(f"plan {path}: readouts[{i}] lacks {missing}; each readout needs {list(READOUT_KEYS)} "
                              "(a framework='probe' readout needs no config)")
        for key in ("name", "dataset"):
            _check_name(spec[key], f"readouts[{i}].{key}", path)
        if spec["framework"] not in ("mmseg", "d2", "probe"):
            raise ConfigError(f"plan {path}: readouts[{i}].framework must be 'mmseg', 'd2' or 'probe', "
                              f"got {spec['framework']!r}")
        if spec["framework"] == "probe":
            _check_probe_readout(spec, f"plan {path}: readouts[{i}]")
    recalibrate = plan.get("recalibrate_bn", [])
    if not isinstance(recalibrate, (list, tuple)) or not all(isinstance(m, str) for m in recalibrate):
        raise ConfigError(f"plan {path}: 'recalibrate_bn' must be a list of method names, got {recalibrate!r}")
    unknown = [m for m in recalibrate if m not in plan.methods and m not in plan.get("checkpoints", {})]
    if unknown:
        raise ConfigError(f"plan {path}: recalibrate_bn names {unknown}, which are not methods of the plan "
                          f"({sorted({*plan.methods, *plan.get('checkpoints', {})})})")
    if not isinstance(plan.get("pretrain_options", {}), dict):
        raise ConfigError(f"plan {path}: 'pretrain_options' must be a dict of --cfg-options")


def _check_probe_readout(spec: dict[str, Any], where: str) -> None:
    """A feature readout's name, dataset and options (each error names the key)."""
    if spec["name"] not in PROBE_OPTIONS:
        raise ConfigError(f"{where}.name must be one of {sorted(PROBE_OPTIONS)} for framework 'probe', "
                          f"got {spec['name']!r}")
    if spec["dataset"] != "synthetic":
        raise ConfigError(f"{where}: framework 'probe' reads the plan's synthetic data only; set dataset='synthetic'")
    options = spec.get("options", {})
    allowed = PROBE_OPTIONS[spec["name"]]
    if not isinstance(options, dict) or any(k not in allowed for k in options):
        raise ConfigError(f"{where}.options {options!r}: {spec['name']} takes only {list(allowed)}")
    for key, value in options.items():
        kind = int if key in ("k", "max_iter") else int | float
        if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
            raise ConfigError(f"{where}.options.{key} must be a positive {'integer' if kind is int else 'number'}, "
                              f"got {value!r}")


def uses_clip_cache(cfg: Config) -> bool:
    """A config whose training reads synthetic clips a clip cache can serve (not a fixed encoder)."""
    data, model = cfg.get("data") or {}, cfg.get("model") or {}
    return (data.get("type") in ("SyntheticPairs", "SyntheticFrames")
            and model.get("type") not in ("rand_init", "imagenet_supervised"))


def trained_checkpoint(runner: Any, work: Path, started: float) -> Path:
    """The checkpoint ``runner`` saved last, i.e. the readout this run trained. Never "the highest
    ``iter_*.pth`` in the folder": a killed earlier attempt with a longer schedule leaves a
    higher-numbered file there, and scoring it would report another run's readout."""
    saved = runner.message_hub.get_info("last_ckpt")  # set by mmengine's CheckpointHook at each save
    # written by this run: mmengine shares a message hub between runners of one config started within
    # the same second, so a path alone could be another run's (1 s of slack for coarse file times)
    if not saved or not Path(saved).is_file() or Path(saved).stat().st_mtime < started - 1:
        raise RuntimeError(f"the readout trained in {work} saved no checkpoint (is default_hooks.checkpoint "
                           "disabled, or save_last=False with an interval that does not divide max_iters?)")
    return Path(saved)


def converted_path(work: Path, method: str, seed: int, target: str) -> Path:
    """Where the bench keeps a checkpoint converted for ``target`` ('mmseg' or 'detectron2')."""
    return work / "converted" / method / f"seed{seed}.{'pth' if target == 'mmseg' else 'pkl'}"


class Bench:
    def __init__(self, plan: str | Path, work_dir: str | Path, seeds: list[int] | None = None) -> None:
        plan = resolve_config(plan, "plan", f"; presets: {sorted(PRESETS)}")
        self.plan_path = Path(plan)
        try:
            self.plan = Config.fromfile(str(plan))
        except Exception as exc:
            last = str(exc).strip().splitlines()[-1:] or [repr(exc)]
            raise ConfigError(f"plan {plan} cannot be parsed: {last[0]}") from exc
        check_plan(self.plan, Path(plan))
        options = dict(self.plan.get("pretrain_options", {}))
        for method, config in self.plan.methods.items():  # typos in pretrain_options fail now, not hours later
            try:
                load_config(self._path(config), {**options, "seed": 0})
            except ConfigError as exc:
                raise ConfigError(f"plan {plan}, method '{method}': {exc}") from exc
        self.work = Path(work_dir)
        self.seeds = seeds if seeds is not None else list(self.plan.seeds)
        self.status_path: Path | None = self.work / "status.json"  # None: keep records in memory (a launched job)
        self.readout_devices = 1  # processes one readout trains on (a launched multi-GPU job sets more)
        self.mmseg_launcher = "none"  # mmengine's launcher for them ("slurm" in a multi-task SLURM job)
        self.status: dict[str, Any] = self._read_status()
        self._probe_data: dict[str, Any] | None = None  # the readout frames feature readouts read, once

    def _read_status(self) -> dict[str, Any]:
        """The status log of earlier runs (only ever appended to: what is done is read from the files),
        so a corrupt one is refused in one line naming it rather than overwritten or a traceback."""
        if not self.status_path.exists():
            return {}
        try:
            status = json.loads(self.status_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            status, why = None, f"cannot be read as JSON ({exc})"
        else:
            why = f"holds a {type(status).__name__}, not a JSON object"
        if not isinstance(status, dict):
            raise ValueError(f"bench status file {self.status_path} {why}; it only logs earlier runs: move it away "
                             "or delete it and run again (finished steps are found from their files)")
        return status

    def _record(self, key: str, state: str, **info: Any) -> None:
        self.status[key] = {"state": state, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
        if self.status_path is not None:
            write_text_atomic(json.dumps(self.status, indent=2), self.status_path)

    def _path(self, p: str, what: str = "config") -> Path:
        """A plan's config path resolves as on the command line (``configs/pretrain/x.py`` from any
        folder and from an installed wheel); a checkpoint path is the user's own file."""
        if what == "checkpoint":
            return Path(p).expanduser()
        return resolve_config(p, f"plan {self.plan_path}: config")

    # -- stages ---------------------------------------------------------------------------------
    def synthetic_dir(self) -> Path | None:
        """Where the plan's synthetic readout data lives (one folder per world: a plan whose world changes
        never reuses another world's frames); None without ``synthetic``."""
        spec = self.plan.get("synthetic")
        if not spec:
            return None
        world = spec.get("world", "crowded")
        return self.work / "data" / ("synthetic_cityscapes" if world == "crowded" else f"synthetic_cityscapes_{world}")

    def synthetic_root(self) -> Path | None:
        """:meth:`synthetic_dir`, written on first use."""
        root = self.synthetic_dir()
        if root is None:
            return None
        spec = self.plan.synthetic
        world = spec.get("world", "crowded")
        if not root.exists():
            from pretrain.data.synthetic import write_cityscapes_layout

            write_cityscapes_layout(root, seed=0, videos=dict(spec["videos"]),
                                    frames_per_video=spec["frames_per_video"], world=world)
        return root

    def pretrain(self, method: str, seed: int) -> Path | str:
        if method in self.plan.get("checkpoints", {}):
            return self._path(self.plan.checkpoints[method], "checkpoint")
        config = self._path(self.plan.methods[method])
        work = self.work / "pretrain" / method / f"seed{seed}"
        options = {**dict(self.plan.get("pretrain_options", {})), "seed": seed}
        from pretrain.api import Trainer

        key = f"pretrain/{method}/seed{seed}"
        t0 = time.perf_counter()
        cfg = load_config(config, options)
        if self.plan.get("clip_cache") and uses_clip_cache(cfg):  # rendered once, shared by the plan's methods
            cfg = load_config(config, {**options, "data.clip_cache": str(self.work / "clips")})
        ckpt = Trainer(cfg, work, resume="auto").train()
        found = self.status.get(key, {})
        if found.get("state") == "done" and found.get("checkpoint") == str(ckpt):
            return ckpt  # found finished: its record keeps the time the training took
        self._record(key, "done", checkpoint=str(ckpt), seconds=round(time.perf_counter() - t0, 1))
        return ckpt

    def readout(self, method: str, seed: int, ckpt: Path, spec: dict[str, Any], synthetic: Path | None) -> str:
        out = self.work / "results" / method / spec["dataset"] / spec["name"] / f"seed{seed}" / "results.json"
        key = str(out.parent.relative_to(self.work))
        if out.is_file():
            return "skipped (done)"
        framework = spec["framework"]
        if framework == "d2" and importlib.util.find_spec("detectron2") is None:
            self._record(key, "skipped", reason="detectron2 is not installed")
            return "skipped (detectron2 not installed)"
        if framework != "probe":  # a feature readout reads the pretraining checkpoint itself
            target = "mmseg" if framework == "mmseg" else "detectron2"
            conv = converted_path(self.work, method, seed, target)
            if not conv.is_file():  # converted/ is the bench's own: a killed conversion's sidecar may be replaced
                convert(ckpt, target, conv, force=True)
            config = self._path(spec["config"])
        work = out.parent
        log = self.work / "logs" / f"{key.replace('/', '_')}.log"
        t0 = time.perf_counter()
        try:
            with output_to(log) as terminal:
                if framework == "probe":
                    self._probe_readout(method, seed, ckpt, spec, synthetic, out)
                elif framework == "mmseg":
                    self._mmseg_readout(config, work, conv, spec, seed, synthetic, out, terminal)
                else:
                    self._d2_readout(config, work, conv, spec, seed, synthetic, log, terminal)
        except Exception as exc:  # recorded, the other runs go on
            self._record(key, "failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
                         log=str(log))
            return f"failed ({type(exc).__name__}: {str(exc)[:200]}; log: {log})"
        self._record(key, "done", seconds=round(time.perf_counter() - t0, 1), log=str(log))
        return "done"

    def _mmseg_readout(self, config: Path, work: Path, conv: Path, spec: dict[str, Any], seed: int,
                       synthetic: Path | None, out: Path, terminal: IO[str]) -> None:
        from mmengine.runner import Runner
        from tqdm import tqdm

        from mmseg_plugin.runner import load_cfg, run_test

        options = {**dict(spec.get("options", {})), "randomness.seed": seed}
        if synthetic is not None and spec["dataset"] == "synthetic":
            options.update({f"{s}_dataloader.dataset.data_root": str(synthetic) for s in ("train", "val", "test")})
        # a limited-label readout (FlowE Table 6) trains on a seeded subset; evaluation is never subsampled
        fraction = {"label_fraction": spec["label_fraction"], "label_seed": seed} if "label_fraction" in spec else {}
        cfg = load_cfg(config, work, str(conv), options, self.mmseg_launcher, **fraction)
        self._keep_paper_batch(config, cfg, spec, terminal)
        runner = Runner.from_cfg(cfg)
        with tqdm(total=cfg.train_cfg.get("max_iters"), desc=f"readout {spec['name']}", file=terminal,
                  dynamic_ncols=True, leave=False) as bar:
            runner.register_hook(_progress_hook(bar))
            started = time.time()
            runner.train()
        run_test(load_cfg(config, work, str(conv), options, self.mmseg_launcher),
                 str(trained_checkpoint(runner, work, started)), out)

    def _probe_readout(self, method: str, seed: int, ckpt: Path, spec: dict[str, Any], synthetic: Path | None,
                       out: Path) -> None:
        """A feature readout (:mod:`pretrain.probe`) of the pretraining checkpoint itself on the synthetic
        readout frames: stride-8 features extracted once per checkpoint (cached under
        ``features/<method>/seed<k>/``; BatchNorm recalibrated first for the plan's ``recalibrate_bn``)."""
        from pretrain import probe
        from pretrain.readout import SYNTHETIC_CLASSES, write_results

        if synthetic is None:
            raise ValueError("a framework='probe' readout reads the plan's synthetic data; add synthetic=dict(...)")
        if self._probe_data is None:
            self._probe_data = {s: probe.read_cityscapes_split(synthetic, s) for s in ("train", "val")}
        (train, train_labels, train_files), (val, val_labels, val_files) = self._probe_data.values()
        recalibrate = method in self.plan.get("recalibrate_bn", [])
        feats, info = probe.checkpoint_features(ckpt, {"train": (train, train_files), "val": (val, val_files)},
                                                self.work / "features" / method / f"seed{seed}",
                                                recalibrate_on="train" if recalibrate else None)
        result = probe.read_out(spec["name"], feats["train"], train_labels, feats["val"], val_labels,
                                len(SYNTHETIC_CLASSES), **dict(spec.get("options", {})))
        print(f"{spec['name']} of {ckpt}: mIoU {result.miou:.2f}; {result.fit}; features {info}", flush=True)
        # the first val frame's prediction (label ids), for the demo's picture
        save_atomic(result.predictions[0].clone(), out.parent / PREDICTION_FILE)
        write_results({"framework": "probe", "readout": spec["name"], "backbone_checkpoint": str(ckpt),
                       "backbone_readout": "encoder", "bn_recalibrated": recalibrate, "fit": result.fit,
                       "metrics": result.metrics(SYNTHETIC_CLASSES),
                       "per_image_confusion": result.per_image.tolist()}, out)  # for bootstrap intervals

    def _d2_readout(self, config: Path, work: Path, conv: Path, spec: dict[str, Any], seed: int,
                    synthetic: Path | None, log: Path, terminal: IO[str]) -> None:
        from tqdm import tqdm

        options = dict(spec.get("options", {}))
        if "label_fraction" in spec:
            options.update({"DATASETS.LABEL_FRACTION": spec["label_fraction"], "DATASETS.LABEL_SEED": seed})
        opts = [f"{k} {v}" for k, v in options.items()]
        cmd = [sys.executable, "-m", "flowssl.d2_train_net", "--config-file", str(config),
               "--num-gpus", str(self.readout_devices),  # detectron2's own launcher: a process per GPU
               *(["--synthetic-root", str(synthetic)] if synthetic else []), "MODEL.WEIGHTS", str(conv),
               "OUTPUT_DIR", str(work), "SEED", str(seed), *" ".join(opts).split()]
        print(f"[bench] readout {spec['name']}: SOLVER.IMS_PER_BATCH is detectron2's global batch, split over "
              f"{self.readout_devices} GPU(s); lr as configured", file=terminal, flush=True)
        metrics = work / "metrics.json"  # detectron2's JSONWriter: one line per logging period
        with open(log, "a") as f, tqdm(total=options.get("SOLVER.MAX_ITER"), desc=f"readout {spec['name']}",
                                       file=terminal, dynamic_ncols=True, leave=False) as bar:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                time.sleep(0.5)
                if metrics.is_file():
                    rows = [r for r in metrics.read_text().splitlines() if '"iteration"' in r]
                    if rows:
                        done = json.loads(rows[-1])["iteration"] + 1
                        bar.update(min(done, bar.total or done) - bar.n)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, cmd)

    def run(self) -> str:
        from .tables import render

        self.check_readout_batches()
        synthetic = self.synthetic_root()
        for seed in self.seeds:
            for method in self.method_names():
                print(f"[bench] seed {seed} {method}: pretraining", flush=True)
                ckpt = self.pretrain(method, seed)
                for spec in self.plan.readouts:
                    print(f"[bench] seed {seed} {method} {spec['name']}/{spec['dataset']} ...", flush=True)
                    state = self.readout(method, seed, Path(ckpt), dict(spec), synthetic)
                    print(f"[bench] seed {seed} {method} {spec['name']}/{spec['dataset']}: {state}", flush=True)
        return render(self.work / "results", "md", measured_only=True)  # what this plan ran, nothing else

    def method_names(self) -> list[str]:
        """The methods in the plan's order: pretrained ones, then checkpoints trained elsewhere."""
        return list(self.plan.methods) + [m for m in self.plan.get("checkpoints", {}) if m not in self.plan.methods]

    # -- the paper's readout batch ----------------------------------------------------------------
    def check_readout_batches(self) -> None:
        """Before any compute: every mmseg readout either gets its config's GPU count (``NxbM`` in
        its name) as ``readout_devices``, or the plan names a ``readout_batch_rule`` for fewer."""
        rule = self.plan.get("readout_batch_rule")
        if rule is not None and rule not in READOUT_BATCH_RULES:
            raise ConfigError(f"plan {self.plan_path}: readout_batch_rule must be one of {READOUT_BATCH_RULES} "
                              f"(or unset: refuse fewer devices than a readout config's GPUs), got {rule!r}")
        for spec in self.plan.readouts:
            if spec["framework"] == "mmseg":
                config = self._path(spec["config"])
                readout_batch(config, paper_gpus(config)[1], self.readout_devices, rule, self._where(spec))

    def _where(self, spec: dict[str, Any]) -> str:
        return f"plan {self.plan_path.name}, readout '{spec['name']}'"

    def _keep_paper_batch(self, config: Path, cfg: Config, spec: dict[str, Any], terminal: IO[str]) -> None:
        """Scale the readout's lr when it trains on fewer devices than its config's GPUs (by the plan's
        rule, else refused), and log the effective batch and lr, as pretraining does."""
        batch, factor, line = readout_batch(config, cfg.train_dataloader.batch_size, self.readout_devices,
                                            self.plan.get("readout_batch_rule"), self._where(spec))
        optimizer = cfg.optim_wrapper.get("optimizer", {})
        if "lr" in optimizer:
            optimizer["lr"] = optimizer["lr"] * factor
            line += f", lr {optimizer['lr']:.4g}"
        print(f"[bench] readout {spec['name']}: {line}", file=terminal, flush=True)
        print(f"flowssl bench: readout {spec['name']}: {line}", flush=True)  # into the readout's log


READOUT_BATCH_RULES = ("linear_lr", "sqrt_lr")
_GPUS_IN_NAME = re.compile(r"_(\d+)xb(\d+)[-_.]")  # mmseg's config naming: {gpus}xb{batch per GPU}


def paper_gpus(config: Path) -> tuple[int, int]:
    """(GPUs, batch per GPU) an mmseg config was tuned for, from mmseg's naming rule (``_8xb2-60k_`` →
    8 GPUs × 2); (1, 0) when the name does not say (the config's batch is then the batch)."""
    m = _GPUS_IN_NAME.search(Path(config).name)
    return (int(m[1]), int(m[2])) if m else (1, 0)


def readout_batch(config: Path, per_device: int, devices: int, rule: str | None, where: str
                  ) -> tuple[int, float, str]:
    """(effective batch, lr factor, what to log) of an mmseg readout trained on ``devices`` processes
    of ``per_device`` images. The config's lr is tuned for its GPUs × ``per_device``; on another count
    the lr is scaled by ``rule`` (pretraining's ``linear_lr`` / ``sqrt_lr``), or, without one, refused:
    an ``8xb2`` config on one process silently trains at batch 2 with the lr of batch 16."""
    from pretrain.trainer import batch_plan

    gpus, _ = paper_gpus(config)
    paper, batch = gpus * per_device, devices * per_device
    if devices == gpus:
        return batch, 1.0, f"effective batch {batch} = {devices} device(s) × {per_device} (the config's)"
    if rule is None:
        raise ConfigError(
            f"{where}: {Path(config).name} is tuned for batch {paper} = {gpus} GPUs × {per_device}, but it would "
            f"train on {devices} device(s) (batch {batch}): run the bench with --launcher slurm (one job with "
            f"{gpus} GPUs per readout), or set readout_batch_rule='linear_lr' (or 'sqrt_lr') in the plan to scale "
            "its lr")
    _, factor = batch_plan(paper, per_device, devices, rule=rule)
    return batch, factor, (f"effective batch {batch} = {devices} device(s) × {per_device} (config: {paper} = "
                           f"{gpus} GPUs × {per_device}), lr ×{factor:.4g} by readout_batch_rule '{rule}'")
