"""`vsm-pool query SQL`: SQL over the DuckDB sink, through the daemon or the file itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ._common import config_option, home_option, load_and_prepare
from .client import daemon_client

__all__ = ["query"]


@click.command()
@home_option
@config_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of standard output (required for parquet).")
@click.option("--sink", default="duckdb", show_default=True, help="The sink plugin whose database answers.")
@click.argument("sql")
def query(home: Path | None, config_file: Path | None, fmt: str, out: Path | None, sink: str, sql: str) -> None:
    """Run SQL over the DuckDB sink (tables sector_events and sectors)."""
    client = daemon_client(home, config_file)
    if client is not None and fmt in ("table", "json"):
        # rows as JSON: no pyarrow on the client for what a terminal shows (issue 14)
        reply = client.call("query", {"sql": sql, "sink": sink})
        rows = [dict(zip(reply["columns"], r)) for r in reply["rows"]]
        _write_rows(reply["columns"], rows, fmt, out)
        return
    if client is not None:
        import base64

        from ..sectors import ipc_to_table

        table = ipc_to_table(base64.b64decode(client.call("query.arrow", {"sql": sql, "sink": sink})))
    else:
        from ..sectors import query_duckdb

        cfg, _ = load_and_prepare(home, config_file)
        path = cfg.settings(sink).meta.get("Path")
        if not path:
            raise click.ClickException(f"{cfg.file}: Common.Plugins.{sink}.Meta.Path: not set, so there is no database to query")
        if not Path(path).exists():
            raise click.ClickException(f"{path}: no sector database yet (it is created when the daemon first runs)")
        try:
            table = query_duckdb(path, sql)
        except Exception as e:
            raise click.ClickException(f"query failed: {e}") from None
    _write_table(table, fmt, out)


def _write_table(table: Any, fmt: str, out: Path | None) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt == "parquet":
        if out is None:
            raise click.UsageError("--format parquet needs --out FILE")
        pq.write_table(table, out)
        return
    if fmt == "csv":
        if out is not None:
            pacsv.write_csv(table, out)
        else:
            import io

            buf = io.BytesIO()
            pacsv.write_csv(table, buf)
            click.echo(buf.getvalue().decode(), nl=False)
        return
    _write_rows(table.column_names, table.to_pylist(), fmt, out)


def _write_rows(columns: list[str], rows: list[dict[str, Any]], fmt: str, out: Path | None) -> None:
    """table or json output of rows (values as Python objects, or as the daemon's JSON)."""
    if fmt == "json":
        text = json.dumps(rows, indent=2, default=str)
    else:
        import io

        shown = [{k: ("" if v is None else v) for k, v in r.items()} for r in rows]
        buf = io.StringIO()
        widths = {c: max([len(c)] + [len(str(r[c])) for r in shown]) for c in columns}
        buf.write("  ".join(c.ljust(widths[c]) for c in columns).rstrip() + "\n")
        for r in shown:
            buf.write("  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip() + "\n")
        buf.write(f"({len(rows)} rows)\n")
        text = buf.getvalue().rstrip("\n")
    if out is not None:
        out.write_text(text + "\n")
    else:
        click.echo(text)
