"""Results tables: rows of dicts written as markdown (for reading) and CSV (every column,
full precision). The one table writer of the project."""

import csv
import math
from pathlib import Path


def markdown_table(rows, columns, *, missing=""):
    """``rows`` as a markdown table.

    Parameters
    ----------
    rows : list of dict
    columns : sequence of (key, header, digits)
        ``digits`` None for text (left-aligned), else the decimals of a number
        (right-aligned).
    missing : str
        What a number cell shows when the row has none (None, "" or NaN).
    """
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |",
             "|" + "|".join("---" if digits is None else "---:" for _, _, digits in columns)
             + "|"]
    for row in rows:
        cells = [_cell(row.get(key), digits, missing) for key, _, digits in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows, columns, markdown_path, csv_path, *, preamble="", missing=""):
    """Write ``rows`` as markdown (``preamble`` first) and as CSV; returns both paths."""
    Path(markdown_path).write_text(preamble + markdown_table(rows, columns, missing=missing))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[key for key, _, _ in columns],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return [Path(markdown_path), Path(csv_path)]


def _cell(value, digits, missing):
    if digits is None:
        return "" if value is None else str(value)
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f"{value:.{digits}f}"
