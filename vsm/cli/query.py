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
    import base64


    client = daemon_client(home, config_file)
    if client is not None:
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
    if fmt == "json":
        text = json.dumps(table.to_pylist(), indent=2, default=str)
    else:
        rows = [{k: ("" if v is None else v) for k, v in r.items()} for r in table.to_pylist()]
        import io as _io

        buf = _io.StringIO()
        widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in table.column_names}
        buf.write("  ".join(c.ljust(widths[c]) for c in table.column_names).rstrip() + "\n")
        for r in rows:
            buf.write("  ".join(str(r[c]).ljust(widths[c]) for c in table.column_names).rstrip() + "\n")
        buf.write(f"({table.num_rows} rows)\n")
        text = buf.getvalue().rstrip("\n")
    if out is not None:
        out.write_text(text + "\n")
    else:
        click.echo(text)
