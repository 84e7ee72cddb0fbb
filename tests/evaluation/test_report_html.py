"""evaluation.report_html: one self-contained page, figures embedded, text escaped."""

from __future__ import annotations

import base64
import re

from napari_allbag.evaluation.figures import render_figures
from napari_allbag.evaluation.report_html import (
    REPORT_NAME,
    build_report_html,
    html_table,
    run_metadata,
    write_report_html,
)
from tests.evaluation.report_data import generated_report_data


def test_report_html_is_self_contained(tmp_path):
    data = generated_report_data()
    figures, numbers = render_figures(data)
    run = run_metadata("bundles/<tiny>", "/data/cells", rule="max")
    assert {"bundle", "data folder", "date", "versions", "rule"} <= set(run)
    assert "torch" in run["versions"] and "numpy" in run["versions"]
    tables = {"Per subject": html_table(numbers["per_subject"])}
    page = build_report_html("Evaluation of <tiny>", run, figures, tables)
    assert "<tiny>" not in page and "&lt;tiny&gt;" in page  # escaped
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(b) for b in embedded] == list(figures.values())
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    assert page.count("<tr>") >= 6 + 1
    path = write_report_html(tmp_path, page)
    assert path.name == REPORT_NAME and path.read_text(encoding="utf-8") == page
    assert [p.name for p in tmp_path.iterdir()] == [REPORT_NAME]
    assert html_table([]) == "<p>(none)</p>"
