"""One self-contained `report.html`: the figures embedded as base64 PNG data URIs, the run's
metadata and the tables, readable in any browser with no other file beside it.

Imports the standard library and the package's pure modules only.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from napari_allbag.io.atomic import write_text_atomic

REPORT_NAME = "report.html"
#: Figure captions by name (figures of other names are shown under their own name).
CAPTIONS = {
    "confusion_matrix": "Confusion matrix of the ensemble (rows: true class).",
    "roc_curve": "ROC curve of the ensemble's P(ALL).",
    "reliability": "Reliability diagram, before and after temperature scaling.",
    "per_subject": "Per-subject figures.",
}
_VERSIONED = ("napari-allbag", "torch", "timm", "numpy")
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
th { background: #dde4ee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; max-width: 480px; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def run_metadata(bundle: str | Path | None, data_folder: str | Path | None, **extra: Any) -> dict:
    """The run's metadata: bundle, data folder, date (UTC), versions, plus any `extra` items."""
    versions = {"python": platform.python_version()}
    for package in _VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "bundle": str(bundle) if bundle is not None else "-",
        "data folder": str(data_folder) if data_folder is not None else "-",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": ", ".join(f"{name} {version}" for name, version in versions.items()),
        **{key.replace("_", " "): value for key, value in extra.items()},
    }


def _cell(value: Any) -> str:
    """One <td>: numbers right-aligned (floats to 3 decimals), text left, None as "-"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"<td>{'-' if value is None else html.escape(str(value))}</td>"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return f'<td class="num">{text}</td>'


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An HTML table of `rows` (dicts), columns in `columns` order (default: the first row's)."""
    if not rows:
        return "<p>(none)</p>"
    columns = list(columns or rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = html.escape(CAPTIONS.get(name, name.replace("_", " ")))
    return (
        f'<figure id="{html.escape(name)}"><img alt="{caption}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def build_report_html(
    title: str,
    run: dict[str, Any],
    figures: dict[str, bytes],
    tables: dict[str, str] | None = None,
) -> str:
    """The page: title, run metadata, figures, then `tables` ({heading: HTML from html_table})."""
    meta = html_table([{"item": key, "value": value} for key, value in run.items()])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Run</h2>",
        meta,
        "<h2>Figures</h2>",
        '<div class="figures">' + "".join(_figure(n, png) for n, png in figures.items()) + "</div>",
    ]
    for heading, table in (tables or {}).items():
        parts += [f"<h2>{html.escape(heading)}</h2>", table]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report_html(out_dir: str | Path, page: str) -> Path:
    """Write the page as `<out_dir>/report.html`, atomically."""
    path = Path(out_dir) / REPORT_NAME
    write_text_atomic(path, page)
    return path
