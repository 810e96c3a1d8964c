"""The `finr1` command line. Pure commands call finr1_core; `run`/`retry-failed` run Prefect flows."""
from __future__ import annotations

import sys

import typer
from rich.console import Console

app = typer.Typer(help="finr1: the Fin-R1 recipe as an observable, resumable Prefect pipeline.", no_args_is_help=True)
console = Console()


def fail(msg: str) -> None:
    """One clear line on stderr, exit 2."""
    Console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False, markup=True)
    raise typer.Exit(2)


# Commands are added below, grouped by stage. Keep each command a thin shell over finr1_core.

if __name__ == "__main__":  # pragma: no cover
    app()
