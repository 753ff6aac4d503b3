"""flowssl bench: a plan runs end to end, resumes, records status and prints the table."""

from __future__ import annotations

import importlib.util
import json

import pytest

from flowssl.cli import main

from .conftest import REPO


def _plan(tmp_path) -> str:
    plan = tmp_path / "plan.py"
    plan.write_text(f'''
methods = dict(rand_init="{REPO}/configs/pretrain/rand_init_r14_synthetic_demo.py")
checkpoints = dict()
pretrain_options = dict(quiet=True)
seeds = [0]
synthetic = dict(videos=dict(train=1, val=1), frames_per_video=2)
readouts = [
    dict(name="deeplabv1", framework="mmseg", dataset="synthetic",
         config="configs/mmseg/deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py",
         options={{"train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "param_scheduler.0.end": 2,
                  "default_hooks.checkpoint.interval": 2}}),
    dict(name="limited_10", framework="mmseg", dataset="synthetic", label_fraction=0.5,
         config="configs/mmseg/deeplabv1_flowssl-r14-finetune_1xb4-300_synthetic-64x128.py",
         options={{"train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "param_scheduler.0.end": 2,
                  "default_hooks.checkpoint.interval": 2}}),
    dict(name="c4", framework="d2", dataset="synthetic",
         config="configs/d2/faster_rcnn_flowssl_R14_C4_synthetic_tiny.yaml",
         options={{"SOLVER.MAX_ITER": 2}}),
]
''')
    return str(plan)


def test_plan_runs_resumes_and_prints_the_table(tmp_path, capsys):
    pytest.importorskip("mmseg")
    has_d2 = importlib.util.find_spec("detectron2") is not None
    work = tmp_path / "work"
    assert main(["bench", _plan(tmp_path), "--work-dir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "rand_init deeplabv1/synthetic: done" in out
    assert ("c4/synthetic: done" in out) if has_d2 else ("c4/synthetic: skipped (detectron2 not installed)" in out)
    assert "| synthetic | rand_init |" in out
    limited = work / "results" / "rand_init" / "synthetic" / "limited_10" / "seed0"
    kept = [line for line in (limited / "label_subset.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(kept) == 1  # half of the 2 training images; Table 6 row in the tables
    assert "| synthetic | rand_init | – | " in out and (limited / "results.json").is_file()
    log = work / "logs" / "results_rand_init_synthetic_deeplabv1_seed0.log"
    assert "mmengine" in log.read_text() and "mmengine" not in out  # framework chatter in the log only
    status = json.loads((work / "status.json").read_text())
    assert status["pretrain/rand_init/seed0"]["state"] == "done"
    assert status["results/rand_init/synthetic/deeplabv1/seed0"]["state"] == "done"
    assert (work / "converted" / "rand_init" / "seed0.pth.json").is_file()
    assert main(["bench", _plan(tmp_path), "--work-dir", str(work)]) == 0  # resumable: nothing reruns
    assert "deeplabv1/synthetic: skipped (done)" in capsys.readouterr().out
    again = json.loads((work / "status.json").read_text())
    assert again["pretrain/rand_init/seed0"] == status["pretrain/rand_init/seed0"]  # its time is not overwritten


def test_print_commands_for_a_cluster(tmp_path, capsys):
    assert main(["bench", str(REPO / "configs/bench/paper_bdd100k.py"), "--work-dir", str(tmp_path),
                 "--print-commands"]) == 0
    out = capsys.readouterr().out
    assert "flowssl pretrain" in out and "flowe_r50_bdd100k.py" in out and "c4 on bdd100k" in out


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "bench").glob("*.py")), ids=lambda p: p.stem)
def test_every_shipped_plan_passes_the_plan_check(path):
    """Each plan in configs/bench (``_base_`` inheritance included) is checked before compute is spent."""
    from mmengine import Config

    from flowssl.bench import check_plan

    plan = Config.fromfile(str(path))
    check_plan(plan, path)
    for cfg in plan.methods.values():
        assert (REPO / cfg).is_file(), cfg
