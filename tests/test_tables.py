import csv
import io
import json

from flowssl.cli import main
from flowssl.tables import PUBLISHED, PUBLISHED_POODLE, render


def _write(root, method, dataset, readout, seed, metrics):
    d = root / method / dataset / readout / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"metrics": metrics}))


def test_tables_put_our_numbers_next_to_the_paper(tmp_path, capsys):
    _write(tmp_path, "flowe", "bdd100k", "deeplabv1", 0, {"mIoU": 30.0, "aAcc": 90.0})
    _write(tmp_path, "flowe", "bdd100k", "deeplabv1", 1, {"mIoU": 34.0})
    _write(tmp_path, "flowe", "bdd100k", "c4", 0, {"bbox": {"AP": 4.0, "AP50": 9.0}})
    _write(tmp_path, "rand_init", "synthetic", "deeplabv1", 0, {"mIoU": 12.5})
    md = render(tmp_path, "md")
    assert "| bdd100k | flowe | 32.0 ± 2.8 | 4.0 | – | – |" in md
    assert "| bdd100k | flowe (paper) | 37.6 | 5.8 | 49.8 | 24.9 |" in md
    assert "| bdd100k | flowe (ours − paper) | -5.6 | -1.8 | – | – |" in md
    assert "| synthetic | rand_init | 12.5 | – | – | – |" in md
    assert "no results.json under flowe/bdd100k/deeplabv3/" in md
    assert "| urbancity | flowe (paper) | 59.5 | 64.0 | 68.8 |" in md  # Table 6 reference
    rows = list(csv.reader(io.StringIO(render(tmp_path, "csv"))))
    assert rows[0] == ["dataset", "method", "mIoU", "mAP", "mIoU†", "mAP†"] and len(rows) == 1 + 3 + 1
    assert "\\begin{tabular}" in render(tmp_path, "latex")
    assert main(["tables", str(tmp_path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("dataset,method")


def test_limited_label_readouts_fill_table6_beside_the_paper(tmp_path):
    for seed, v in ((0, 40.0), (1, 44.0)):
        _write(tmp_path, "flowe", "cityscapes", "limited_10", seed, {"mIoU": v})
    _write(tmp_path, "flowe", "cityscapes", "limited_100", 0, {"mIoU": 60.0})
    _write(tmp_path, "flowe", "cityscapes", "deeplabv1", 0, {"mIoU": 45.0})
    md = render(tmp_path, "md")
    assert "| cityscapes | flowe | – | 42.0 ± 2.8 | 60.0 |" in md
    assert "| cityscapes | flowe | 45.0 | – | – | – |" in md  # Table 1-3 columns unaffected
    assert "| urbancity | supervised_end_to_end (paper) | 42.0 | 53.9 | 63.3 |" in md


def test_published_numbers_are_table1_values():
    assert PUBLISHED["bdd100k"]["byol_crop_video"] == (8.2, 0.0, 10.7, 2.1)
    assert PUBLISHED["urbancity"]["flowe"] == (49.6, 5.8, 61.7, 19.0)
    assert PUBLISHED["cityscapes"]["imagenet_supervised"] == (43.8, 6.1, 59.9, 25.3)


def test_poodle_reference_rows_stand_beside_ours_without_a_difference(tmp_path):
    _write(tmp_path, "poodle", "bdd100k", "deeplabv1", 0, {"mIoU": 36.0})
    md = render(tmp_path, "md")
    assert "| bdd100k | poodle (encoder) | 36.0 | – | – | – |" in md  # results without the field: encoder-only
    assert "poodle (ours − paper)" not in md  # other protocols: no difference row
    assert "| poodle (PooDLe paper) | 39.2 | 49.9 | 4.9 | 25.2 | 47.2 | 60.7 |" in md
    assert "| flowe (PooDLe paper) | 35.7 | 47.3 | 3.2 | 23.8 | 43.1 | 57.7 |" in md
    assert PUBLISHED_POODLE["rand_init"][:2] == (9.7, 26.1)
    _write(tmp_path / "synthetic_only", "flowe", "synthetic", "deeplabv1", 0, {"mIoU": 17.0})
    assert "PooDLe paper" not in render(tmp_path / "synthetic_only", "md")


def test_missing_results_folder(tmp_path, capsys):
    assert main(["tables", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_poodle_rows_say_whether_the_decoder_was_read_out(tmp_path):
    """Issue 21.6: a PooDLe row names its readout — encoder alone or encoder + spatial decoder — and the two
    are separate rows, never averaged as seeds of one."""
    for seed, (readout, miou) in enumerate((("encoder", 30.0), ("encoder+decoder", 34.0), ("encoder+decoder", 36.0))):
        d = tmp_path / "poodle" / "bdd100k" / "deeplabv1" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"metrics": {"mIoU": miou}, "backbone_readout": readout}))
    md = render(tmp_path, "md")
    assert "| bdd100k | poodle (encoder) | 30.0 | – | – | – |" in md
    assert "| bdd100k | poodle (encoder+decoder) | 35.0 ± 1.4 | – | – | – |" in md
    _write(tmp_path, "flowe", "bdd100k", "deeplabv1", 0, {"mIoU": 33.0})
    assert "| bdd100k | flowe | 33.0 |" in render(tmp_path, "md")  # other methods keep their name


def test_a_bench_prints_only_what_it_ran(tmp_path):
    """After a run (bench, demo): the measured columns only, no paper rows, no Table 6 or PooDLe blocks
    and no "no results.json" notes for readouts the plan never had."""
    _write(tmp_path, "flowe", "synthetic", "deeplabv1", 0, {"mIoU": 30.0})
    _write(tmp_path, "poodle", "synthetic", "deeplabv1", 0, {"mIoU": 31.0})
    md = render(tmp_path, "md", measured_only=True)
    assert md.splitlines()[:4] == ["| dataset | method | mIoU |", "|---|---|---|", "| synthetic | flowe | 30.0 |",
                                   "| synthetic | poodle (encoder) | 31.0 |"]
    assert "paper" not in md and "Table 6" not in md and "no results.json" not in md and len(md.splitlines()) == 4
    full = render(tmp_path, "md")
    assert "Table 6" in full and "PooDLe paper" in full and "no results.json under flowe/synthetic/c4/" in full
