"""The HTTP side of ``autolabel view`` and ``autolabel tune``: FastAPI apps over a
``RunBrowser`` or a ``Tuner``, and a uvicorn server on a port of our choosing.

FastAPI (on Starlette) rather than Gradio: the pages need paged grids over 100k images, sliders
wired to exact counts and SVG outlines, which a small static page does directly, while
Gradio's components would load whole galleries and bring a large dependency tree and outbound
calls. FastAPI validates every query parameter by type and comes with pydantic, which Ray
already installs. The page itself is three files in ``static/``, read once at start and served
from memory: no path from a request ever reaches the filesystem; run images are addressed by
``image_id`` and try overlays by number.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import secrets
import socket
import sys
from importlib import resources
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from pipeline.core.config import ConfigError
from pipeline.core.errors import OperationError
from pipeline.results.filters import FilterError
from pipeline.web.browse import ImageNotFoundError, RunBrowser, Sliders
from pipeline.web.comparing import RunComparer
from pipeline.web.tuning import TUNABLE, Tuner

ASSET_TYPES = {".css": "text/css", ".js": "text/javascript", ".html": "text/html"}
PNG_CACHE = "private, max-age=3600"


def assets() -> dict[str, bytes]:
    """The pages' static files, read once from the package."""
    folder = resources.files("pipeline.web") / "static"
    return {item.name: item.read_bytes() for item in folder.iterdir() if item.is_file()}


def page_app(page: str) -> FastAPI:
    """An app serving ``page`` at ``/`` and the shared assets at ``/assets/NAME``."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    files = assets()

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(files[page])

    @app.get("/assets/{name}")
    def asset(name: str) -> Response:
        if name not in files:
            raise HTTPException(404, "no such asset")
        suffix = name[name.rfind(".") :]
        return Response(files[name], media_type=ASSET_TYPES.get(suffix, "text/plain"))

    @app.exception_handler(FilterError)
    @app.exception_handler(ConfigError)
    def bad_request(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(ImageNotFoundError)
    def not_found(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": "no such image in this run"}, status_code=404)

    return app


def sliders(
    min_predicted_iou: Annotated[float | None, Query(ge=0, le=1)] = None,
    min_stability_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    min_area: Annotated[int | None, Query(ge=0)] = None,
    max_area: Annotated[int | None, Query(ge=0)] = None,
    min_area_fraction: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_area_fraction: Annotated[float | None, Query(ge=0, le=1)] = None,
    top_k: Annotated[int | None, Query(ge=1)] = None,
    min_box_iou: Annotated[float | None, Query(ge=0, le=1)] = None,
    categories: Annotated[str | None, Query(pattern=r"^-?\d+(,-?\d+)*$")] = None,
) -> Sliders:
    """The filter of a request, from its query parameters (validated by FastAPI)."""
    return Sliders(
        min_predicted_iou=min_predicted_iou,
        min_stability_score=min_stability_score,
        min_area=min_area,
        max_area=max_area,
        min_area_fraction=min_area_fraction,
        max_area_fraction=max_area_fraction,
        top_k=top_k,
        min_box_iou=min_box_iou,
        categories=tuple(int(c) for c in categories.split(",")) if categories else None,
    )


Filter = Annotated[Sliders, Depends(sliders)]


def png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": PNG_CACHE})


def view_app(browser: RunBrowser, comparer: RunComparer | None = None) -> FastAPI:
    """The ``autolabel view`` app over one run (``comparer``: and its comparison with a
    second run, ``--compare``)."""
    app = page_app("view.html")

    @app.get("/api/summary")
    def summary(filter: Filter) -> dict[str, Any]:
        return {**browser.summary(filter), "compare": comparer.summary() if comparer else None}

    @app.post("/api/reload")
    def reload() -> dict[str, Any]:
        if comparer:
            comparer.reload()
        else:
            browser.reload()
        return {"shards": len(browser.run.shards), "images": len(browser.image_ids)}

    @app.get("/api/images")
    def images(
        filter: Filter,
        sort: str = "image",
        page: Annotated[int, Query(ge=0)] = 0,
        per_page: Annotated[int, Query(ge=1, le=200)] = 24,
    ) -> dict[str, Any]:
        return browser.page(filter, sort, page, per_page)

    @app.get("/api/images/{image_id}/thumb.png")
    def thumbnail(image_id: int, filter: Filter) -> Response:
        return png(browser.picture(image_id, filter, side=256))

    @app.get("/api/images/{image_id}/image.png")
    def image(image_id: int) -> Response:
        return png(browser.picture(image_id, None, side=None))

    @app.get("/api/images/{image_id}/masks")
    def masks(image_id: int, filter: Filter) -> dict[str, Any]:
        return browser.image_masks(image_id, filter)

    @app.get("/api/images/{image_id}/compare")
    def compared(image_id: int, filter: Filter) -> dict[str, Any]:
        if comparer is None:
            raise HTTPException(404, "no second run: autolabel view A --compare B")
        return comparer.image(image_id, filter)

    return app


def tune_app(tuner: Tuner) -> FastAPI:
    """The ``autolabel tune`` app over a few sample images."""
    app = page_app("tune.html")

    @app.get("/api/settings")
    def settings() -> dict[str, Any]:
        values = tuner.settings()
        return {
            "input": str(tuner.source),
            "preset": tuner.preset,
            "overrides": tuner.base_overrides,
            "images": [uri.rsplit("/", 1)[-1] for uri in tuner.uris],
            "fields": [
                {"key": key, "label": label, "type": kind.__name__, "value": values[key]}
                for key, (label, kind) in TUNABLE.items()
            ],
        }

    @app.post("/api/tries")
    def run_try(settings: Annotated[dict[str, float | int], Body(embed=True)]) -> dict[str, Any]:
        return tuner.run(settings).summary()

    @app.get("/api/tries")
    def tries() -> list[dict[str, Any]]:
        return [attempt.summary() for attempt in tuner.tries]

    @app.get("/api/tries/{number}/{index}.png")
    def overlay(number: int, index: int) -> Response:
        try:
            return png(tuner.find(number).overlays[index])
        except (KeyError, IndexError):
            raise HTTPException(404, "no such try or image") from None

    return app


def is_loopback(host: str) -> bool:
    """True when ``host`` resolves to a loopback address."""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "autolabel_token"


def guard(app: FastAPI, host: str, token: str | None, port: int = 0) -> None:
    """Answer only requests meant for this server. Without ``token`` (a loopback address),
    only those whose ``Host`` header names ``host`` or a loopback name (else 421: a page that
    points its own name at this address, DNS rebinding, gets nothing). With ``token`` (any
    other address, reached under names this server cannot know), only requests that carry
    it (query ``token=`` once, then a cookie named for the port), else 403."""
    allowed = {host.lower(), *LOOPBACK_NAMES}
    cookie = f"{TOKEN_COOKIE}_{port}"
    expected = (token or "").encode()

    @app.middleware("http")
    async def check(request: Request, call_next):
        name = host_name(request.headers.get("host", ""))
        if token is None and name not in allowed:
            return JSONResponse({"detail": "unknown Host"}, status_code=421)
        if token is None:
            return await call_next(request)
        given = request.query_params.get("token") or request.cookies.get(cookie) or ""
        if not secrets.compare_digest(given.encode(), expected):
            return JSONResponse({"detail": "open the URL printed by autolabel"}, 403)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(cookie, token, httponly=True, samesite="strict")
        return response


def host_name(header: str) -> str:
    """``example.org:8000`` → ``example.org``; ``[::1]:8000`` → ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class ServeError(OperationError):
    """The page cannot be served at the asked address; one line for the user (exit 1)."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (IPv4 or IPv6, as ``host`` resolves).

    Raises:
        ServeError: ``host`` does not resolve to an address of this machine, or the port is
            taken or not allowed.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ServeError(f"--host {host} does not resolve: {error.strerror}") from error
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ServeError(
                f"port {port} on {host} is in use; give another --port (0 picks a free one)"
            ) from error
        raise ServeError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    return sock


def serve(app: FastAPI, host: str, port: int, what: str) -> None:
    """Serve ``app`` on ``host:port`` (0: a free port) until interrupted; print the URL.

    On loopback (the default) the pages answer requests addressed to loopback names only;
    on any other address they also need the token in the printed URL.
    """
    sock = listening_socket(host, port)
    try:
        serve_on(app, sock, host, what)
    finally:
        sock.close()


def serve_on(app: FastAPI, sock: socket.socket, host: str, what: str) -> None:
    """Serve ``app`` on the bound ``sock`` until interrupted (see ``serve``)."""
    import uvicorn

    token = None
    if not is_loopback(host):
        token = secrets.token_urlsafe(24)
        print(
            f"warning: serving on {host}, not loopback: anyone who has the URL (it holds a "
            "token) and can reach this machine can see these images",
            file=sys.stderr,
        )
    guard(app, host, token, sock.getsockname()[1])
    sock.listen(128)  # connections wait from now on: the URL printed next works at once
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address
    url = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={token}" if token else "")
    print(f"{what} at {url} (Ctrl-C stops it)", flush=True)
    config = uvicorn.Config(app, log_level="warning")
    if not hasattr(asyncio, "Runner") or not hasattr(config, "get_loop_factory"):
        uvicorn.Server(config).run(sockets=[sock])  # Python 3.10, uvicorn before 0.36
        return
    loop_factory = config.get_loop_factory()
    # uvicorn's Server.run makes the coroutine before the loop exists; a Ctrl-C in
    # between left a "coroutine was never awaited" warning under the one-line answer.
    serving = uvicorn.Server(config).serve(sockets=[sock])
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serving)
    finally:
        serving.close()  # a no-op once it ran; silences it if it never started
