# -*- test-case-name: tests.admin.test_cli -*-
"""How the CLI prints: JSON for scripts (``--json``), aligned columns for people."""

import json
from typing import Any, Sequence

import click


def emit_json(value: Any) -> None:
    """Print ``value`` as indented JSON."""
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    if value is None or value == "":
        return "-"
    return str(value)


def emit_table(rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Print ``rows`` as aligned columns with a header; a note when there are none."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=False)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)).rstrip())


def emit_record(record: dict) -> None:
    """Print one object as ``key: value`` lines; nested lists of objects indented below."""
    for key, value in record.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            click.echo(f"{key}:")
            for item in value:
                click.echo("  - " + ", ".join(f"{k}={_cell(v)}" for k, v in item.items()))
        elif isinstance(value, dict):
            click.echo(f"{key}: " + ", ".join(f"{k}={_cell(v)}" for k, v in value.items()))
        else:
            click.echo(f"{key}: {_cell(value)}")
