"""Entry point of the `assay` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import corpus, dedup_cmd, demo, interop_cmds, mining, search_cmds, serve_cmd, simulate_cmd
from ._common import State, setup_logging

app = typer.Typer(
    name="assay",
    help="Mine a huge unlabelled corpus for the data that matters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            v = metadata.version("assay")
        except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
            v = "unknown"
        typer.echo(f"assay {v}")
        raise typer.Exit()


@app.callback()
def _root(
    workspace: Annotated[
        Optional[Path], typer.Option("-w", "--workspace", help="Workspace folder (default: current directory).")
    ] = None,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More log output (-v, -vv).")] = 0,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print assay's version and exit.")
    ] = False,
) -> None:
    State.workspace = workspace
    setup_logging(verbose)


corpus.register(app)
demo.register(app)
search_cmds.register(app)
dedup_cmd.register(app)
mining.register(app)
serve_cmd.register(app)
simulate_cmd.register(app)
interop_cmds.register(app)


def main() -> None:
    import os

    # Model-loading progress bars from Hugging Face libraries would interleave with ours.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
