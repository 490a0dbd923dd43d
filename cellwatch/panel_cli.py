"""`cellwatch panel`: serve the Streamlit panel for a data folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("panel")
@click.option("--data", "-d", default=Path("data") / "demo", show_default=True, envvar="CELLWATCH_DATA",
              type=click.Path(path_type=Path, file_okay=False), help="Folder holding records.db and historian/.")
@click.option("--history", type=click.Path(path_type=Path, file_okay=False),
              help="An older history folder (records.db, historian/) whose batches the panel also shows.")
@click.option("--mlflow", "mlflow_db", type=click.Path(path_type=Path, dir_okay=False),
              help="MLflow tracking store (sqlite file; default: DATA/mlflow.db).")
@click.option("--port", "-p", default=8501, show_default=True, type=click.IntRange(1, 65535))
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 for every interface; put a TLS proxy in front).")
def panel(data: Path, history: Path | None, mlflow_db: Path | None, port: int, address: str) -> None:
    """Serve the panel for operators, QA and data scientists (Ctrl-C stops it)."""
    from dashboards import app_main

    if not (data / "records.db").exists():
        raise click.ClickException(f"{data}: no records.db here; run `cellwatch demo` or "
                                   f"`cellwatch simulate --out {data}` first")
    click.echo(f"cellwatch panel for {data} on http://{address}:{port} (Ctrl-C stops it)", err=True)
    if history is not None and not (history / "records.db").exists():
        raise click.ClickException(f"--history {history}: no records.db here")
    sys.exit(app_main(data, port, address, history=history, mlflow_db=mlflow_db))
