"""Shared pieces of the CLI: the workspace option, error handling, progress bars, JSON output."""

from __future__ import annotations

from .._jsonutil import json_default

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from ..errors import AssayError, InputError, NotFoundError
from ..workspace import Workspace

# Messages carry user text (file names, concept names, region specs): no markup or emoji codes are read from
# them ("[/]" or ":100:" print as they are); the few styled prefixes ask for markup explicitly.
console = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)
out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)

WorkspaceOpt = Annotated[
    Optional[Path],
    typer.Option("-w", "--workspace", help="Workspace folder (default: the current directory).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


class State:
    workspace: Path | None = None


def open_workspace(path: Path | None) -> Workspace:
    return Workspace.open(path if path is not None else State.workspace)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=json_default) + "\n")
    sys.stdout.flush()



def fail(message: str, code: int = 1) -> "typer.Exit":
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    return typer.Exit(code)


@contextlib.contextmanager
def errors_to_exit(interrupted: str = "interrupted; finished work was kept, run the command again to resume") -> Iterator[None]:
    """Turn assay's errors into a clear message and a non-zero exit code (2 for bad input); ``interrupted``
    is what Ctrl-C prints."""
    try:
        yield
    except (InputError, NotFoundError) as exc:
        raise fail(str(exc), 2) from None
    except AssayError as exc:
        raise fail(str(exc), 1) from None
    except KeyboardInterrupt:
        raise fail(interrupted, 130) from None
    except OSError as exc:  # the disk, not assay: one line saying which file and what to do
        raise fail(_os_error_message(exc), 1) from None


def _os_error_message(exc: OSError) -> str:
    import errno

    where = f" ({exc.filename})" if getattr(exc, "filename", None) else " (writing to the workspace or --out)"
    what = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space and run the command again: what was finished and acknowledged is kept"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "assay needs to write there: check the folder's permissions or mount, or use another workspace"
    else:
        hint = "run the command again once the cause is fixed; what was finished and acknowledged is kept"
    return f"{what}{where}: {hint}"


@contextlib.contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """Yield ``(start(total), advance(n))`` callbacks driving a rich progress bar with items/s."""
    if not enabled or not console.is_terminal and not _force_progress():
        yield (lambda total: None), (lambda n: None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console, transient=False,
    ) as prog:
        task = prog.add_task(description, total=None, rate="")

        def start(total: int) -> None:
            prog.update(task, total=total)

        def advance(n: int) -> None:
            prog.advance(task, n)
            speed = prog.tasks[0].speed
            if speed:
                prog.update(task, rate=f"{speed:,.1f} items/s")

        yield start, advance


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0, 32), 127, *range(128, 160)]}


def printable(value: object) -> str:
    """``value`` as text safe for a terminal: control characters (escape sequences that clear the screen or
    retitle the window, tabs and newlines that break a line-per-item listing) are written as ``\\xNN``.
    Human-readable output only; ``--json`` keeps the values as they are."""
    return str(value).translate(_CONTROL)


def _force_progress() -> bool:
    import os

    return os.environ.get("ASSAY_PROGRESS", "") == "1"


class _UserFormatter(logging.Formatter):
    """``warning: message`` at the default verbosity, the style of the CLI's own warnings and errors; with
    ``-v`` the level and logger name too (``INFO assay.embed: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose <= 0:
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr:
                h.setFormatter(_UserFormatter())
    if verbose <= 0:
        import warnings

        # A warning is one line for the user ("warning: ..."), not Python's file:line and source echo.
        def _show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
            console.print(f"[yellow]warning:[/] {_escape(str(message))}", markup=True, highlight=False)

        warnings.showwarning = _show


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
