"""The operator console: ``/console``, a page and its script and style, vendored in the package.

No build step, no CDN, nothing fetched from elsewhere: the page talks only to this server's API, and its
Content-Security-Policy forbids any other origin. The page itself holds no data and needs no key (it is the
login form); every call it makes carries the key and meets the API's own checks.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

__all__ = ["router", "CONSOLE_DIR", "SECURITY_HEADERS"]

router = APIRouter(include_in_schema=False)
CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("/")
def root() -> RedirectResponse:
    """The console."""
    return RedirectResponse("/console", status_code=307)


@router.get("/console")
def console() -> FileResponse:
    """The console's page (the login form until a key is given)."""
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


@router.get("/console/{name}")
def console_asset(name: str) -> FileResponse:
    """The console's script and style (nothing else is served from its directory)."""
    if name not in ASSETS:
        raise HTTPException(404, detail=f"no console file {name!r}")
    return FileResponse(CONSOLE_DIR / name, media_type=ASSETS[name], headers=SECURITY_HEADERS)
