"""``flowssl tables``: readout results next to the FlowE paper's published numbers.

Results are read from ``RESULTS/<method>/<dataset>/<readout>[/<seed>]/results.json`` — the JSONs
``tools/mmseg_test.py`` and ``tools/d2_train_net.py`` write. Readouts: ``deeplabv1`` (mIoU),
``deeplabv3`` (mIoU†), ``c4`` (mAP), ``fpn`` (mAP†); the feature readouts ``linear_probe`` and ``knn``
(:mod:`pretrain.probe`) as columns of their own, shown when measured. Several seeds print as mean ± std.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from pretrain.readout import RESULTS_FILE, read_results

COLUMNS = ("mIoU", "mAP", "mIoU†", "mAP†")
# The feature readouts (converged linear probe, dense kNN; mIoU): not the paper's protocols, so columns
# after the paper's four, and only in tables that hold some of them.
FEATURE_COLUMNS = ("probe mIoU", "kNN mIoU")
READOUT_COLUMN = {"deeplabv1": "mIoU", "deeplabv3": "mIoU†", "c4": "mAP", "fpn": "mAP†",
                  "linear_probe": "probe mIoU", "knn": "kNN mIoU"}

# FlowE (Xiong et al., ICCV 2021), shared/papers/flowe_xiong2021_flow_equivariance.md.
PUBLISHED: dict[str, dict[str, dict[str, tuple[float, float, float, float]]]] = {
    "bdd100k": {  # Table 1 (and Table 2 for the ImageNet rows)
        "rand_init": (9.8, 0.0, 22.0, 5.5), "byol": (11.3, 0.0, 21.9, 4.5), "byol_crop": (9.5, 0.0, 18.2, 4.2),
        "byol_crop_video": (8.2, 0.0, 10.7, 2.1), "crw": (19.4, 1.7, 34.7, 22.9), "vince": (23.2, 0.1, 39.5, 23.8),
        "flowe": (37.6, 5.8, 49.8, 24.9), "supervised_end_to_end": (52.0, 8.0, 56.6, 20.0),
        "imagenet_supervised": (34.0, 3.6, 52.4, 24.9), "simclr_imagenet": (28.1, 2.7, 51.0, 26.8),
        "byol_imagenet": (28.3, 2.8, 52.4, 26.0),
    },
    "urbancity": {
        "rand_init": (9.4, 0.0, 27.3, 6.4), "byol": (14.0, 0.0, 19.6, 5.0), "byol_crop": (13.5, 0.0, 26.6, 5.1),
        "byol_crop_video": (7.8, 0.0, 13.0, 2.0), "crw": (19.0, 0.0, 31.6, 15.2), "vince": (30.6, 0.9, 47.4, 17.8),
        "flowe": (49.6, 5.8, 61.7, 19.0), "supervised_end_to_end": (63.3, 2.2, 67.0, 16.5),
        "imagenet_supervised": (39.6, 3.3, 57.7, 18.8), "simclr_imagenet": (37.0, 3.0, 58.6, 21.0),
        "byol_imagenet": (35.4, 2.4, 59.8, 19.5),
    },
    "cityscapes": {  # Table 3 (FlowE rows: pretrained on BDD100K / UrbanCity)
        "imagenet_supervised": (43.8, 6.1, 59.9, 25.3), "simclr_imagenet": (39.9, 5.0, 60.3, 28.9),
        "byol_imagenet": (38.2, 4.1, 59.8, 27.4), "vince": (26.7, 1.1, 57.5, 25.6),
        "flowe": (45.6, 5.7, 56.6, 26.8), "flowe_urbancity": (51.1, 7.4, 63.7, 28.1),
    },
}
# Table 6 (UrbanCity, fine-tuned standard header, mIoU by fraction of labels). The extracted text
# runs the rows together ("42.0 53.9 59.5 63.3 | 64.0 68.8"); read with the supervised 100 % equal to
# Table 1's 63.3, FlowE's 1 % is 59.5.
PUBLISHED_LIMITED_LABELS = {"supervised_end_to_end": {"1%": 42.0, "10%": 53.9, "100%": 63.3},
                            "flowe": {"1%": 59.5, "10%": 64.0, "100%": 68.8}}

# PooDLe (Wang et al., ICLR 2025), its main BDD100K table (the first results table; read from the project
# page's results image, the PDF text was not available offline). Other protocols than FlowE's: "linear"
# and "UperNet" segmentation heads (PooDLe's linear readout sits on its decoder), "Det C4" and "FPN"
# detectors — so these rows stand beside ours, never differenced. The FlowE row is PooDLe's authors'
# re-run (100 epochs, 512×1024), not FlowE's paper.
POODLE_COLUMNS = ("BDD linear", "BDD UperNet", "BDD Det C4", "BDD FPN", "CS linear", "CS UperNet")
PUBLISHED_POODLE: dict[str, tuple[float, ...]] = {
    "rand_init": (9.7, 26.1, 0.0, 7.7, 9.8, 30.7),
    "flowe": (35.7, 47.3, 3.2, 23.8, 43.1, 57.7),
    "poodle": (39.2, 49.9, 4.9, 25.2, 47.2, 60.7),
    "imagenet_supervised": (36.7, 55.2, 3.6, 24.9, 46.8, 63.4),
}


class NotMeasured:
    """A readout whose metric is ``null`` (or NaN): no number was measured. ``tools/mmseg_test.py``
    writes ``"mIoU": null`` when every val label is ignored, and detectron2 reports AP NaN when the
    model predicts nothing (written as ``null`` too; files from before hold a bare ``NaN``). The table
    shows such a cell as ``n/a`` and names the file in a note."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key


def _metric(value: Any, path: Path, key: str) -> float | NotMeasured:
    """``value`` as a float, ``NotMeasured`` for null/NaN, or a one-line ValueError naming the file
    for anything else: a string ("42.5"), a bool (``true`` is 1 to Python), a list, ±inf."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NotMeasured(path, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{path}: metrics.{key} is {json.dumps(value)[:60]}, not a finite number; "
                         "rerun that readout or delete the file")
    return float(value)


def result_value(data: dict, path: Path = Path(RESULTS_FILE)) -> float | NotMeasured | None:
    """The number a results.json contributes: mIoU for segmentation, mask AP if present else box AP."""
    metrics = data.get("metrics", {})
    if "mIoU" in metrics:
        return _metric(metrics["mIoU"], path, "mIoU")
    for task in ("segm", "bbox"):
        if task not in metrics:
            continue
        if not isinstance(metrics[task], dict):
            raise ValueError(f"{path}: metrics.{task} is {json.dumps(metrics[task])[:60]}, expected an object "
                             "with 'AP'; rerun that readout or delete the file")
        if "AP" in metrics[task]:
            return _metric(metrics[task]["AP"], path, f"{task}.AP")
    return None


LIMITED_FRACTIONS = ("1%", "10%", "100%")


def readout_column(readout: str) -> str | None:
    """The table column of a readout folder: ``deeplabv1`` → mIoU …, ``limited_10`` → ``10%``
    (FlowE Table 6: fine-tuned standard header trained on 10 % of the labels)."""
    if readout.startswith("limited_") and f"{readout.removeprefix('limited_')}%" in LIMITED_FRACTIONS:
        return f"{readout.removeprefix('limited_')}%"
    return READOUT_COLUMN.get(readout)


Values = list[float | NotMeasured]


def collect(results: str | Path) -> dict[tuple[str, str], dict[str, Values]]:
    """{(dataset, method): {column: [values over seeds]}} from the results tree (the Table 6 label
    fractions are columns too)."""
    root = Path(results)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist")
    table: dict[tuple[str, str], dict[str, Values]] = defaultdict(lambda: defaultdict(list))
    files = sorted(root.rglob(RESULTS_FILE))
    if not files:
        raise FileNotFoundError(f"no results.json under {root}: expected <method>/<dataset>/<readout>[/seed<k>]/"
                                "results.json, as 'flowssl bench' or tools/mmseg_test.py write them")
    for path in files:
        parts = path.relative_to(root).parts
        if len(parts) < 4:
            continue
        method, dataset, readout = parts[0], parts[1], parts[2]
        column = readout_column(readout)
        if column is None:
            continue
        data = read_results(path)
        value = result_value(data, path)
        if value is not None:
            table[(dataset, row_label(method, data))][column].append(value)
    return table


def bootstrap_intervals(results: str | Path) -> dict[tuple[str, str, str], tuple[float, float]]:
    """{(dataset, method row, column): 95 % interval} over val images for the readouts that store
    per-image confusions (the feature readouts), the seeds averaged (:func:`pretrain.probe.bootstrap_miou`)."""
    import torch

    from pretrain.probe import bootstrap_miou

    found: dict[tuple[str, str, str], list[torch.Tensor]] = defaultdict(list)
    for path in sorted(Path(results).rglob(RESULTS_FILE)):
        parts = path.relative_to(results).parts
        column = readout_column(parts[2]) if len(parts) >= 4 else None
        data = read_results(path) if column else {}
        if column and isinstance(data.get("per_image_confusion"), list):
            found[(parts[1], row_label(parts[0], data), column)].append(torch.tensor(data["per_image_confusion"]))
    out = {}
    for key, runs in found.items():
        if len({tuple(r.shape) for r in runs}) == 1:  # the same val images in every seed
            out[key] = bootstrap_miou(runs)
    return out


def row_label(method: str, data: dict) -> str:
    """The method cell: PooDLe rows say what was read out — the encoder alone (FlowE's protocol, flowssl's
    default export) or encoder + spatial decoder (PooDLe's own, ``FlowsslResNet(decoder=...)``); results
    written before that choice existed were encoder-only. The two are never averaged together."""
    readout = data.get("backbone_readout", "encoder")
    if readout == "encoder+decoder":
        return f"{method} (encoder+decoder)"
    return f"{method} (encoder)" if "poodle" in method else method


def _measured(values: Values) -> list[float]:
    return [v for v in values if not isinstance(v, NotMeasured)]


def _cell(values: Values) -> str:
    """mean (± std over seeds) of the measured values; ``n/a`` where none was measured, and
    ``(+k n/a)`` where k seeds were not — the mean is then over fewer seeds, which the cell says."""
    measured = _measured(values)
    if not values:
        return "–"
    if not measured:
        return "n/a"
    text = f"{measured[0]:.1f}" if len(measured) == 1 else \
        f"{statistics.mean(measured):.1f} ± {statistics.stdev(measured):.1f}"
    skipped = len(values) - len(measured)
    return f"{text} (+{skipped} n/a)" if skipped else text


def _not_measured_notes(values: Values) -> list[str]:
    return [f"{v.path}: metrics.{v.key} is null/NaN (not measured: e.g. every val label ignored, or no "
            "predictions); shown as n/a" for v in values if isinstance(v, NotMeasured)]


def escape_md(text: str) -> str:
    """A markdown table cell: ``|`` would start a new cell, a newline a new row."""
    return re.sub(r"[\r\n]+", " ", text).replace("|", "\\|")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
                  "^": r"\textasciicircum{}", "_": r"\_", "%": r"\%", "~": r"\textasciitilde{}"}


def escape_latex(text: str) -> str:
    """A LaTeX table cell: method names are folder names, and ``\\input``, ``&`` or ``%`` in one would
    run a command, add a column or comment out the rest of the row."""
    text = re.sub(r"[\r\n]+", " ", text)
    return re.sub(r"[\\{}$&#^_%~]", lambda m: _LATEX_SPECIAL[m[0]], text).replace("±", "$\\pm$")


def build_rows(results: str | Path, measured_only: bool = False) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows (ours, then the paper's with differences) and footnotes.

    ``measured_only`` (what a bench or the demo prints after its run): only the columns something was
    measured in, no paper rows and no notes about readouts nobody ran — a newcomer reads those as
    failures."""
    table = collect(results)
    columns = COLUMNS + tuple(c for c in FEATURE_COLUMNS if any(cols.get(c) for cols in table.values()))
    if measured_only:
        columns = tuple(c for c in columns if any(cols.get(c) for cols in table.values()))
    header = ["dataset", "method", *columns]
    intervals = bootstrap_intervals(results)
    rows, notes = [], []
    for dataset in sorted({d for d, _ in table} | {d for d in PUBLISHED if any(k[0] == d for k in table)}):
        for (d, method), cols in sorted(table.items()):
            if d != dataset or not any(cols.get(c) for c in columns):
                continue
            row = [dataset, method]
            for c in columns:
                ci = intervals.get((dataset, method, c))
                row.append(_cell(cols.get(c, [])) + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""))
                if not cols.get(c) and not measured_only:
                    notes.append(f"{dataset}/{method} {c}: no results.json under {method}/{dataset}/"
                                 f"{[k for k, v in READOUT_COLUMN.items() if v == c][0]}/")
            rows.append(row)
            ref = None if measured_only else PUBLISHED.get(dataset, {}).get(method)
            if ref is not None:
                paper = [dataset, f"{method} (paper)"]
                diff = [dataset, f"{method} (ours − paper)"]
                for c, pub in zip(COLUMNS, ref, strict=True):
                    paper.append(f"{pub:.1f}")
                    vals = _measured(cols.get(c, []))
                    diff.append(f"{statistics.mean(vals) - pub:+.1f}" if vals else "–")
                extra = ["–"] * (len(columns) - len(COLUMNS))  # the paper has no feature readouts
                rows += [paper + extra, diff + extra]
    for _, cols in sorted(table.items()):  # every n/a cell names its file (Table 6 columns included)
        for c in sorted(cols):
            notes += _not_measured_notes(cols[c])
    return header, rows, notes


def render(results: str | Path, fmt: str = "md", measured_only: bool = False) -> str:
    header, rows, notes = build_rows(results, measured_only)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue()
    if fmt == "latex":
        lines = ["\\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", "\\toprule",
                 " & ".join(h.replace("†", "$^\\dagger$") for h in header) + " \\\\", "\\midrule"]
        lines += [" & ".join(escape_latex(c) for c in r) + " \\\\" for r in rows]
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"
    if fmt != "md":
        raise ValueError(f"unknown format '{fmt}'; choose md, latex or csv")
    table = collect(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape_md(c) for c in r) + " |" for r in rows]
    limited = [(d, m, cols) for (d, m), cols in sorted(table.items()) if any(cols.get(f) for f in LIMITED_FRACTIONS)]
    if limited or not measured_only:
        lines += ["", "Limited labels, FlowE Table 6 (mIoU, fine-tuned standard header, by fraction of training "
                  "labels" + ("" if measured_only else "; the paper's rows are UrbanCity") + "):",
                  "| dataset | method | " + " | ".join(LIMITED_FRACTIONS) + " |",
                  "|---|---|" + "---|" * len(LIMITED_FRACTIONS)]
    for d, m, cols in limited:
        lines.append(f"| {escape_md(d)} | {escape_md(m)} | "
                     + " | ".join(_cell(cols.get(f, [])) for f in LIMITED_FRACTIONS) + " |")
    for m, v in ({} if measured_only else PUBLISHED_LIMITED_LABELS).items():
        lines.append(f"| urbancity | {m} (paper) | " + " | ".join(f"{v[f]:.1f}" for f in LIMITED_FRACTIONS) + " |")
    if not measured_only and any(m.split(" (")[0] == "poodle" or d in ("bdd100k", "cityscapes") for d, m in table):
        lines += ["", "PooDLe's published numbers (Wang et al., ICLR 2025, main BDD100K table; mIoU / mAP, their "
                  "protocols, not comparable cell by cell with the columns above; FlowE = their re-run):",
                  "| method | " + " | ".join(POODLE_COLUMNS) + " |", "|---|" + "---|" * len(POODLE_COLUMNS)]
        lines += [f"| {m} (PooDLe paper) | " + " | ".join(f"{v:.1f}" for v in vals) + " |"
                  for m, vals in PUBLISHED_POODLE.items()]
    if notes:
        lines += [""] + [f"[{i + 1}] {n}" for i, n in enumerate(notes)]
    return "\n".join(lines) + "\n"
