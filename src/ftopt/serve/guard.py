"""Which requests the server answers at all, decided from the request line and headers before any work.

The page is a local service a browser talks to, so the browser's own rules are the threat model (docs/serve.md,
"Security"):
- DNS rebinding: a site the user visits re-points its own name at 127.0.0.1, and the browser then treats this
  server as that site. Its requests carry the attacker's name in `Host`, so only the names this server is known by
  are answered (an IP literal involves no DNS, so on a wildcard bind any IP literal is one of them).
- Cross-site requests: any page may send a "simple" POST (text/plain, no preflight) or embed a GET as an image.
  A request that changes state needs `Content-Type: application/json` (which forces a CORS preflight this server
  never grants) and, when it carries an `Origin`, this server's own; an API GET that the browser marks cross-site
  (`Sec-Fetch-Site`) is refused. A request with no `Origin` comes from a non-browser client: browsers send
  `Origin` on every POST and DELETE (Fetch standard, "append a request Origin header"), and a client that can
  leave it out could as well write any value into it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::")
SAFE_METHODS = ("GET", "HEAD")
# Sec-Fetch-Site values of a request the page itself makes or the user typed (W3C Fetch Metadata)
OWN_FETCH_SITES = ("same-origin", "none")
_DIGITS = re.compile(r"[0-9]+")


class Refused(Exception):
    """A request this server does not answer: its HTTP status and one sentence."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Names:
    """The names (Host header values, port left out) this server answers to."""

    names: frozenset[str]
    any_ip: bool  # bound to every interface: reached by whatever address the client used

    @classmethod
    def of(cls, given: str, bound: str) -> Names:
        names = {*LOOPBACK_NAMES, _bare(given), _bare(bound)}
        wildcard = _bare(given) in WILDCARDS
        if wildcard:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        return cls(frozenset(n for n in names if n), wildcard)

    def allows(self, name: str) -> bool:
        return name in self.names or (self.any_ip and _is_ip(name))


def _bare(host: str) -> str:
    return host.strip().strip("[]").lower()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _host_name(value: str) -> str | None:
    """The name part of a Host header value (`127.0.0.1:8080`, `[::1]:8080`, `localhost`), or None if malformed."""
    try:
        parts = urlsplit("//" + value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return None
    if parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return parts.hostname


def check_host(headers, names: Names) -> str:
    """The request's Host header, if it is one of `names`; else Refused."""
    values = headers.get_all("Host") or []
    if len(values) != 1:
        raise Refused(HTTPStatus.BAD_REQUEST, "The request needs exactly one Host header.")
    name = _host_name(values[0].strip())
    if name is None or not names.allows(name):
        raise Refused(
            HTTPStatus.MISDIRECTED_REQUEST,
            f"This server answers only to {', '.join(sorted(names.names))}, not to the Host header given.",
        )
    return values[0].strip()


def check_origin(method: str, path: str, headers, host: str) -> None:
    """Refused unless the request may come from where it says (see the module docstring)."""
    if method in SAFE_METHODS:
        site = headers.get("Sec-Fetch-Site")
        if path.startswith("/api/") and site is not None and site.lower() not in OWN_FETCH_SITES:
            raise Refused(HTTPStatus.FORBIDDEN, "The planner's API answers only its own page, not other sites.")
        return
    origin = headers.get("Origin")
    if origin is not None and origin.strip().lower() != f"http://{host}".lower():
        raise Refused(HTTPStatus.FORBIDDEN, "A request that changes something must come from the planner's page.")
    ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if method == "POST" and ctype != "application/json":
        raise Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "A POST must send its body as application/json.")


def body_length(headers, limit: int) -> int:
    """The declared body size in bytes, checked against `limit` before anything is read."""
    if headers.get("Transfer-Encoding") is not None:
        raise Refused(HTTPStatus.LENGTH_REQUIRED, "A chunked body is not read; send Content-Length.")
    values = headers.get_all("Content-Length") or []
    if not values:
        return 0
    if len(values) != 1 or not _DIGITS.fullmatch(values[0].strip()):
        raise Refused(HTTPStatus.BAD_REQUEST, "Content-Length must be one whole number of bytes.")
    digits = values[0].strip().lstrip("0") or "0"
    if len(digits) > len(str(limit)) or int(digits) > limit:  # compared as text first: no int() of 5000 digits
        raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"The request body is larger than {limit} bytes.")
    return int(digits)
