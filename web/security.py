"""Request guards: Host check (DNS rebinding), same-origin check on writes, optional bearer token.

A page on another site must not drive this server through the user's browser:
- DNS rebinding: evil.example re-resolves to 127.0.0.1 and its page calls us with `Host: evil.example`.
  Only local names, IP literals (rebinding needs a name the attacker controls), the configured HOST and
  OPTIM_ALLOWED_HOSTS are accepted (the defence Ollama added for the same attack).
- Cross-site writes (CSRF): a state-changing request whose `Origin` is not this server, or that the browser
  marks `Sec-Fetch-Site: cross-site`, is refused. Clients without `Origin` (curl, scripts) are not browsers
  acting for a page and pass. GETs that cost a CAD build (views marked `@expensive`: exports, renders, target
  comparisons) get the same check, so a foreign page's <img> tags cannot keep the build worker busy.
- HTML pages carry a Content-Security-Policy: scripts, styles and connections from this server only (the inline
  import map is allowed by a per-response nonce), no plugins, no framing.
- OPTIM_TOKEN: when set, every /api/* request needs `Authorization: Bearer <token>`, or the HttpOnly
  SameSite=Strict cookie that `GET /?token=<token>` sets for the browser UI. /healthz and static files stay open.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
from urllib.parse import urlsplit

from flask import Flask, g, redirect, request

from .config import Config
from .errors import error_response

log = logging.getLogger(__name__)

COOKIE_NAME = "optim_token"
COOKIE_MAX_AGE_S = 30 * 24 * 3600
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
LOCAL_NAMES = {"localhost"}
WILDCARD_BINDS = {"", "0.0.0.0", "::", "[::]", "*"}
DEFAULT_PORTS = {"http": "80", "https": "443"}
EXPENSIVE_ATTR = "optim_expensive"
# blob:/data: images: the reference-photo preview is a data: URL, the favicon is data:, and GLTFLoader turns embedded
# textures into blob: URLs. Styles set from JavaScript (element.style) are not inline styles under CSP.
PAGE_CSP = ("default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def expensive(view):
    """Mark a GET view whose answer costs a CAD build: cross-site requests for it are refused like writes."""
    setattr(view, EXPENSIVE_ATTR, True)
    return view


def csp_nonce() -> str:
    """The nonce of this response's Content-Security-Policy (templates put it on their inline <script>)."""
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return g.csp_nonce


def split_host(host: str) -> tuple[str, str | None]:
    """'Example.com:80' -> ('example.com', '80'); '[::1]:5160' -> ('::1', '5160'). Lowercased, no brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        return name, port or None
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, port or None
    return host, None  # no port, or a bare IPv6 literal


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_allowed(host_header: str, config: Config) -> bool:
    name, _port = split_host(host_header)
    name = name.rstrip(".")
    if not name or name in LOCAL_NAMES or name.endswith(".localhost") or _is_ip_literal(name):
        return True
    bound = split_host(config.host)[0]
    if config.host not in WILDCARD_BINDS and name == bound:
        return True
    for allowed in config.allowed_hosts:
        allowed = allowed.strip().lower()
        if allowed == "*" or name == split_host(allowed)[0]:
            return True
        if allowed.startswith(".") and (name.endswith(allowed) or name == allowed[1:]):
            return True
    return False


def _origin_key(scheme: str, netloc: str) -> tuple[str, str, str]:
    name, port = split_host(netloc)
    scheme = scheme.lower()
    return scheme, name, port or DEFAULT_PORTS.get(scheme, "")


def same_origin(origin: str, scheme: str, host_header: str) -> bool:
    """True when `origin` (the Origin header) is this server as the request reached it."""
    parts = urlsplit(origin.strip())
    if not parts.scheme or not parts.netloc:
        return False  # includes "null" (sandboxed frames, file:// pages)
    return _origin_key(parts.scheme, parts.netloc) == _origin_key(scheme, host_header)


def cookie_value(token: str) -> str:
    """What the UI cookie holds: derived from the token, so the cookie never carries the token itself."""
    return hmac.new(token.encode(), b"optim-ui-cookie-v1", hashlib.sha256).hexdigest()


def _equal(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authorised(token: str) -> bool:
    return _equal(bearer_token(), token) or _equal(request.cookies.get(COOKIE_NAME), cookie_value(token))


def register_security(app: Flask, config: Config) -> None:
    token = config.token

    @app.before_request
    def _guard():
        host = request.headers.get("Host")
        if host is not None and not host_allowed(host, config):
            log.warning("refused request for host %r (set OPTIM_ALLOWED_HOSTS to allow it)", host)
            return error_response(403, "host_not_allowed",
                                  f"this server does not answer for host {split_host(host)[0]!r}; "
                                  "add it to OPTIM_ALLOWED_HOSTS if you meant to reach it by that name")
        costly = request.method in {"GET", "HEAD"} and getattr(app.view_functions.get(request.endpoint),
                                                                EXPENSIVE_ATTR, False)
        if request.method in STATE_CHANGING or costly:
            origin = request.headers.get("Origin")
            cross_site = request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site"
            if cross_site or (origin is not None and not same_origin(origin, request.scheme, host or request.host)):
                what = "renders and exports" if costly else "requests that change the design"
                return error_response(403, "cross_origin", f"{what} are only served to this server's own page "
                                                           "(or to clients that send no Origin, such as curl)")
        if token is None:
            return None
        path = request.path
        if path == "/" and request.method == "GET":
            return _page_login(token)
        if path.startswith("/api/") or path == "/api":
            if not authorised(token):
                resp, status = error_response(401, "unauthorized",
                                              "this server requires a token: send 'Authorization: Bearer <OPTIM_TOKEN>'"
                                              " or open the page once as /?token=<OPTIM_TOKEN>")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="optim"'
                return resp, status
        return None

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")  # the apply/undo buttons must not be clickjacked
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        if resp.mimetype == "text/html":
            resp.headers.setdefault("Content-Security-Policy", PAGE_CSP.format(nonce=csp_nonce()))
        return resp

    app.jinja_env.globals["csp_nonce"] = csp_nonce


def _page_login(token: str):
    """GET /: the token arrives once as ?token=, becomes a cookie, and the URL is cleaned of it."""
    given = request.args.get("token")
    if given is not None:
        if not _equal(given, token):
            return error_response(401, "unauthorized", "the token in the address is wrong")
        resp = redirect("/", code=303)
        resp.set_cookie(COOKIE_NAME, cookie_value(token), max_age=COOKIE_MAX_AGE_S, httponly=True,
                        samesite="Strict", secure=request.is_secure, path="/")
        return resp
    if authorised(token):
        return None
    return error_response(401, "unauthorized",
                          "this server requires a token: open it as /?token=<OPTIM_TOKEN> (the value of OPTIM_TOKEN)")
