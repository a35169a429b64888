"""`assay serve`: the labelling web app and its REST API (FastAPI under uvicorn)."""

from __future__ import annotations

import errno
import ipaddress
import os
from typing import Annotated

import typer

from ._common import WorkspaceOpt, console, errors_to_exit, open_workspace

TOKEN_ENV = "ASSAY_TOKEN"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    workspace: WorkspaceOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; other machines can reach it only if you change this.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8600,
    token: Annotated[str | None, typer.Option("--token", help=f"Require this bearer token on every route (default: ${TOKEN_ENV}, read at start).", show_default=False)] = None,
    encoder: Annotated[str | None, typer.Option("--encoder", help="Encoder whose index serves search and selection (default: the workspace's).")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="Strategy of the first batch; later batches reuse the latest round's.")] = "seals:entropy",
    batch: Annotated[int, typer.Option("--batch", min=1, max=1000, help="Items per batch.")] = 50,
) -> None:
    """Serve the labelling page and the REST API (OpenAPI at /openapi.json, docs at /docs)."""
    from ..errors import require

    with errors_to_exit():
        require("fastapi", "server", "assay serve")
        uvicorn = require("uvicorn", "server", "assay serve")
        from ..server.app import ServerConfig, create_app

        from ..errors import InputError
        from ..select.strategies import get_strategy

        get_strategy(strategy)  # an unknown strategy fails now, not at the first batch
        if token is not None and not token.isascii():
            raise InputError("--token must be ASCII (an HTTP Authorization header carries only ASCII)")
        token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        ws = open_workspace(workspace)
        if encoder is not None and (not ws.vectors(encoder).exists() or len(ws.vectors(encoder)) == 0):
            raise InputError(f"--encoder {encoder}: the workspace has no embeddings by it; run "
                             f"`assay embed --encoder {encoder}` first, or leave --encoder out for the workspace's default")
        _check_port_free(host, port)
        cfg = ServerConfig(token=token, encoder=encoder, strategy=strategy, batch=batch, check_host=_is_loopback(host))
        app = create_app(ws, cfg)
        if not _is_loopback(host) and token is None:
            console.print(f"[bold yellow]warning:[/] serving on {host} without a token: anyone who can reach this "
                          f"machine can read and label. Pass --token or set ${TOKEN_ENV}.", markup=True)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{shown}:{port}/"
        console.print(f"assay labelling app for {ws.root} at {url}" + ("?token=<your token> (once; a cookie keeps it)" if token else ""))
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        finally:
            app.state.proposer.close()
            ws.close()


def _check_port_free(host: str, port: int) -> None:
    """Fail before anything is printed or loaded when the address cannot be bound (a port in use, a host that
    is not this machine's), naming the option to change."""
    import socket

    from ..errors import InputError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {host} is in use (another `assay serve`?); pick another with --port") from None
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}); change --host or --port") from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
