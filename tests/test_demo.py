"""``flowssl demo`` end to end on a reduced budget: the table of what ran, and one picture."""

from __future__ import annotations

import cv2

from flowssl.demo import run_table_demo

from .conftest import REPO


def test_the_demo_prints_what_it_ran_and_writes_its_picture(tmp_path, capsys):
    plan = tmp_path / "plan.py"
    plan.write_text(f'''
methods = dict(byol="{REPO}/configs/pretrain/byol_r14_synthetic_demo.py",
               flowe="{REPO}/configs/pretrain/flowe_r14_synthetic_demo.py")
pretrain_options = dict(max_iters=2, checkpoint_interval=2, num_workers=0, quiet=True)
seeds = [0]
synthetic = dict(videos=dict(train=1, val=1), frames_per_video=2)
readouts = [dict(name="linear_probe", framework="probe", dataset="synthetic", options=dict(tol=1e-3))]
''')
    table = run_table_demo(tmp_path / "work", plan)
    out = capsys.readouterr().out
    assert table.splitlines()[0] == "| dataset | method | probe mIoU |"
    assert {line.split(" | ")[1] for line in table.splitlines()[2:] if line} == {"byol", "flowe"}
    assert "(paper)" not in out and "no results.json" not in out and "Table 6" not in out
    picture = tmp_path / "work" / "demo.png"
    assert f"picture: {picture}" in out
    assert cv2.imread(str(picture)).shape == (3 * 128, 2 * 256, 3)  # frame|labels, 2 PCA, 2 predictions
