"""The one module that talks HTTP to model providers (RELIABILITY.md S11).

Everything that reaches an upstream goes through here, so the SSRF rules live in one place:

* ``validate_url_syntax``: static checks of a URL (scheme, host syntax, no userinfo, no
  parser-confusion characters). Run for every model's ``baseUrl``, YAML ones included.
* ``resolve_and_check``: turn the host into IP addresses and check every one of them
  (``check_address``) unless the model is trusted (operator YAML).
* ``pinned_request_args``: connect to the IP that was checked, never to a second DNS answer
  (DNS rebinding), while keeping the ``Host`` header and TLS SNI of the real host name.
* Redirects are never followed.

Error messages never carry secrets, header values or upstream bodies.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpcore
import httpx

from orgs.perloop import PerLoop

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Any]

__all__ = [
    "ProbeResult",
    "UpstreamAuthError",
    "UpstreamResolveError",
    "UpstreamURLError",
    "build_auth_headers",
    "check_address",
    "get_async_client",
    "join_health_url",
    "pinned_request_args",
    "probe",
    "resolve_and_check",
    "safe_url",
    "validate_url_syntax",
]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class UpstreamURLError(ValueError):
    """A URL (or the address it points to) that the gateway refuses to call.

    ``reason`` is the message without the field prefix; ``str(exc)`` is ``"<field>: <reason>"``.
    Neither ever contains userinfo, query strings or header values.
    """

    def __init__(self, reason: str, *, field: str = "baseUrl") -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}")

    def with_field(self, field: str) -> UpstreamURLError:
        """The same error reported against another field (e.g. ``healthCheck.url``)."""
        return type(self)(self.reason, field=field)


class UpstreamResolveError(UpstreamURLError):
    """The host name did not resolve (not an SSRF refusal, but still unusable)."""


class UpstreamAuthError(ValueError):
    """Upstream credentials could not be assembled. The message never contains a secret."""


# --------------------------------------------------------------------------------------------
# Static URL checks
# --------------------------------------------------------------------------------------------

MAX_URL_LENGTH = 2048
_ALLOWED_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# One DNS label: letters, digits, hyphen (underscore tolerated for internal service names).
_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# WHATWG URL: a host whose last label is a number is parsed as an IPv4 address.
_NUMERIC_LABEL_RE = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_IPV4_NUMERIC_CHARS_RE = re.compile(r"^[0-9a-fx.]+$")
_BAD_CHAR_RE = re.compile(r"[\x00-\x20\x7f\\]")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _split(url: str, field: str) -> SplitResult:
    if not isinstance(url, str) or not url:
        raise UpstreamURLError("must be a non-empty absolute http(s) URL", field=field)
    if len(url) > MAX_URL_LENGTH:
        raise UpstreamURLError(f"must be at most {MAX_URL_LENGTH} characters", field=field)
    if _BAD_CHAR_RE.search(url):
        raise UpstreamURLError(
            "must not contain whitespace, control characters or backslashes", field=field
        )
    if not url.isascii():
        raise UpstreamURLError(
            "must be ASCII (use punycode for international host names and "
            "percent-encoding in paths)",
            field=field,
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UpstreamURLError("is not a valid URL", field=field) from None
    return parts


def _canonical_ipv4(host: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        return None


def _check_host_syntax(netloc: str, field: str) -> str:
    """Validate the host part of ``netloc`` (no userinfo) and return it lowercased."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise UpstreamURLError("IPv6 address must be enclosed in [ ]", field=field)
        literal = netloc[1:end]
        if "%" in literal:
            raise UpstreamURLError("IPv6 zone identifiers are not allowed", field=field)
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise UpstreamURLError("host is not a valid IPv6 address", field=field) from None
        rest = netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UpstreamURLError("unexpected characters after the IPv6 address", field=field)
        return literal.lower()

    host = netloc.rsplit(":", 1)[0] if ":" in netloc else netloc
    host = host.lower()
    if not host:
        raise UpstreamURLError("host is missing", field=field)
    if "%" in host:
        raise UpstreamURLError("host must not be percent-encoded", field=field)
    if len(host) > 253:
        raise UpstreamURLError("host name is too long", field=field)
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if _NUMERIC_LABEL_RE.match(labels[-1]):
        # Looks like an IPv4 address: only the canonical dotted-quad form is accepted, so that
        # every parser (ours, the resolver's, the HTTP client's) agrees on what it means.
        if _canonical_ipv4(host) is None:
            raise UpstreamURLError(
                "host is not a canonical IPv4 address (use four decimal numbers without "
                "leading zeros, e.g. 203.0.113.7)",
                field=field,
            )
        return host
    for label in labels:
        if not _LABEL_RE.match(label):
            raise UpstreamURLError(
                "host is not a valid host name (letters, digits, hyphens and dots only)",
                field=field,
            )
    return host


def validate_url_syntax(url: str, *, field: str = "baseUrl") -> None:
    """Static checks of an upstream URL; raises :class:`UpstreamURLError`.

    Accepts only absolute ``http``/``https`` URLs with a plain ASCII host (DNS name, canonical
    dotted-quad IPv4 or bracketed IPv6), an optional port, path and query. Rejects userinfo,
    fragments, backslashes, whitespace/control characters, non-ASCII and non-canonical
    numeric hosts. Does not look at what the address *is* (see :func:`resolve_and_check`).
    """
    parts = _split(url, field)
    scheme = parts.scheme.lower()
    if not scheme:
        raise UpstreamURLError("must be an absolute URL with an http or https scheme", field=field)
    if scheme not in _ALLOWED_SCHEMES:
        raise UpstreamURLError("scheme must be http or https", field=field)
    if not url[len(parts.scheme) + 1 :].startswith("//") or not parts.netloc:
        raise UpstreamURLError("must be an absolute URL (scheme://host/...)", field=field)
    if "@" in parts.netloc:
        raise UpstreamURLError("credentials (user@host) are not allowed in the URL", field=field)
    if "#" in url:
        raise UpstreamURLError("fragments (#...) are not allowed", field=field)
    _check_host_syntax(parts.netloc, field)
    try:
        port = parts.port
    except ValueError:
        raise UpstreamURLError("port must be a number between 1 and 65535", field=field) from None
    if port is not None and not 1 <= port <= 65535:
        raise UpstreamURLError("port must be a number between 1 and 65535", field=field)
    if parts.netloc.endswith(":"):
        raise UpstreamURLError("port is empty", field=field)


def safe_url(url: str) -> str:
    """``url`` without userinfo, query and fragment: safe to show in messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme.lower(), netloc, parts.path, "", ""))


# --------------------------------------------------------------------------------------------
# Address checks
# --------------------------------------------------------------------------------------------

# Cloud metadata endpoints: blocked even when an allowlist covers them.
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OCI, ...
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
    }
)
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_BLOCKED_HOSTNAMES = frozenset(
    {
        "localhost",
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_NOT_ALLOWED = "private, loopback and link-local addresses are not allowed"


@lru_cache(maxsize=64)
def _parse_networks(
    networks: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    parsed = []
    for cidr in networks:
        try:
            parsed.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"UPSTREAM_ALLOWED_NETWORKS: {cidr!r} is not a valid CIDR") from None
    return tuple(parsed)


def _effective(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address really designates, if any (mapped, 6to4, NAT64)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _blocked_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or ``None`` if it is one."""
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a shared (CGNAT, 100.64.0.0/10) address"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL:
        return "a unique-local address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


def check_address(
    ip: IPAddress,
    allowed_networks: list[str],
    *,
    host: str | None = None,
    field: str = "baseUrl",
) -> None:
    """Raise :class:`UpstreamURLError` unless ``ip`` may be called by an org model.

    Public (global unicast) addresses pass. Any other address passes only if it lies in one of
    ``allowed_networks`` (CIDR strings, ``settings.UPSTREAM_ALLOWED_NETWORKS``); cloud metadata
    addresses are refused even then. IPv4-mapped, 6to4 and NAT64 IPv6 addresses are judged by
    the IPv4 address they embed. ``host`` only improves the message.
    """
    effective = _effective(ip)
    subject = f"host {host} resolves to {ip}," if host else f"host {ip} is"
    if ip in _METADATA_ADDRESSES or effective in _METADATA_ADDRESSES:
        raise UpstreamURLError(
            f"{subject} a cloud metadata address; metadata addresses are never allowed",
            field=field,
        )
    kind = _blocked_kind(effective)
    if kind is None:
        return
    for net in _parse_networks(tuple(allowed_networks or ())):
        for candidate in {ip, effective}:
            if candidate.version == net.version and candidate in net:
                return
    raise UpstreamURLError(f"{subject} {kind}; {_NOT_ALLOWED}", field=field)


def _numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Decode the numeric IPv4 forms ``inet_aton`` accepts (``127.1``, ``0x7f000001``, ...)."""
    if not _IPV4_NUMERIC_CHARS_RE.match(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _default_resolver(host: str, port: int) -> list[Any]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)


# How host names are resolved when no resolver is passed, by probes and by the guarded client
# alike. A module attribute so that tests can put a simulated DNS in its place (rebinding).
resolve_host: Resolver = _default_resolver


def _addresses_from(result: Any) -> list[str]:
    out: list[str] = []
    for item in result or ():
        if isinstance(item, str):
            raw = item
        elif isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raw = str(item)
        else:  # a getaddrinfo 5-tuple: (family, type, proto, canonname, sockaddr)
            raw = item[4][0]
        out.append(raw.split("%", 1)[0])
    return out


def resolve_and_check(
    host: str,
    port: int,
    *,
    trusted: bool,
    allowed_networks: list[str],
    resolver: Resolver | None = None,
    field: str = "baseUrl",
) -> list[str]:
    """Resolve ``host`` and check every address; return the validated IPs (canonical strings).

    Literal addresses (including every numeric IPv4 spelling ``inet_aton`` understands) are
    decoded without DNS. ``localhost``, ``*.localhost`` and metadata host names are refused
    outright. ``resolver(host, port)`` defaults to ``socket.getaddrinfo`` and may return
    getaddrinfo tuples or plain IP strings. With ``trusted=True`` (operator YAML models) no
    address is refused, but the host is still resolved so that the caller can pin the IP.
    Raises :class:`UpstreamURLError` (or :class:`UpstreamResolveError` when DNS fails).
    """
    name = (host or "").strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name:
        raise UpstreamURLError("host is missing", field=field)
    if "%" in name:
        raise UpstreamURLError("IPv6 zone identifiers are not allowed", field=field)
    networks = [] if trusted else list(allowed_networks or [])

    # 1. Literal IPv6 / canonical IPv4.
    literal: IPAddress | None
    try:
        literal = ipaddress.ip_address(name)
    except ValueError:
        literal = None
    if literal is not None:
        if not trusted:
            check_address(literal, networks, field=field)
        return [str(literal)]

    # 2. Other numeric IPv4 spellings (2130706433, 0x7f000001, 127.1, 0177.0.0.1, 0, ...).
    bare = name[:-1] if name.endswith(".") else name
    numeric = _numeric_ipv4(bare)
    if numeric is not None:
        if not trusted:
            check_address(numeric, networks, host=host, field=field)
            raise UpstreamURLError(
                f"host {host} is a non-canonical IPv4 address; write it as {numeric}",
                field=field,
            )
        return [str(numeric)]
    if _NUMERIC_LABEL_RE.match(bare.rsplit(".", 1)[-1]):
        raise UpstreamURLError(f"host {host} is not a valid IPv4 address", field=field)

    # 3. Host names.
    if not trusted and (bare in _BLOCKED_HOSTNAMES or bare.endswith(".localhost")):
        kind = "a loopback host name" if "localhost" in bare else "a cloud metadata host name"
        raise UpstreamURLError(f"host {bare} is {kind}; {_NOT_ALLOWED}", field=field)
    try:
        result = (resolver or resolve_host)(name, port)
    except (OSError, UnicodeError):
        raise UpstreamResolveError(f"host {bare} could not be resolved", field=field) from None
    addresses: list[str] = []
    for raw in _addresses_from(result):
        try:
            ip = ipaddress.ip_address(raw)
        except ValueError:
            raise UpstreamResolveError(
                f"host {bare} resolved to an invalid address", field=field
            ) from None
        if not trusted:
            check_address(ip, networks, host=bare, field=field)
        if str(ip) not in addresses:
            addresses.append(str(ip))
    if not addresses:
        raise UpstreamResolveError(f"host {bare} could not be resolved", field=field)
    return addresses


# --------------------------------------------------------------------------------------------
# Pinning and URL helpers
# --------------------------------------------------------------------------------------------


def pinned_request_args(url: str, ip: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Rewrite ``url`` to connect to ``ip`` while still addressing the original host.

    Returns ``(url_with_ip, {"Host": host[:port]}, extensions)``; for https the extensions
    carry ``sni_hostname`` so TLS SNI and certificate checks use the real host name. Pass
    all three to ``httpx.Client.build_request(..., headers=..., extensions=...)``.
    Userinfo and fragments are dropped.

    Caveat: httpx pools connections by (scheme, IP, port), so two https hosts pinned to the
    same IP can share a pooled connection whose SNI was the first host's.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    scheme = parts.scheme.lower()
    port = parts.port
    pinned = ipaddress.ip_address(ip.strip("[]").split("%", 1)[0])
    host_display = f"[{host}]" if ":" in host else host
    default_port = _DEFAULT_PORTS.get(scheme)
    host_header = (
        f"{host_display}:{port}" if port is not None and port != default_port else host_display
    )
    ip_display = f"[{pinned}]" if pinned.version == 6 else str(pinned)
    netloc = f"{ip_display}:{port}" if port is not None else ip_display
    new_url = urlunsplit((scheme, netloc, parts.path, parts.query, ""))
    extensions: dict[str, Any] = {}
    if scheme == "https":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            extensions["sni_hostname"] = host.rstrip(".")
    return new_url, {"Host": host_header}, extensions


def join_health_url(base_url: str | None, path: str) -> str:
    """Join a health-check ``path`` to ``baseUrl`` (api-contract §5.9).

    ``/health`` replaces the base path (``https://h/v1`` -> ``https://h/health``); ``health``
    is appended to it as if it ended in ``/`` (-> ``https://h/v1/health``). A query string in
    ``path`` is kept (and replaces the base URL's query; without one the base query is kept).
    The host can never change: ``path`` is not resolved as a URL reference.
    """
    field = "healthCheck.path"
    if not base_url:
        raise UpstreamURLError("a baseUrl is required to use a health-check path", field=field)
    # urlsplit drops tabs and newlines: the base must be a URL the probe would accept as it is.
    validate_url_syntax(base_url)
    if not isinstance(path, str) or not path:
        raise UpstreamURLError("must be a non-empty path", field=field)
    if _BAD_CHAR_RE.search(path) or not path.isascii() or "#" in path:
        raise UpstreamURLError(
            "must be an ASCII path without whitespace, backslashes or fragments", field=field
        )
    if path.startswith("//"):
        raise UpstreamURLError("must not start with //", field=field)
    base = urlsplit(base_url)
    path_part, sep, query = path.partition("?")
    if path_part.startswith("/"):
        new_path = path_part
    else:
        base_path = base.path if base.path.endswith("/") else base.path + "/"
        new_path = base_path + path_part
    new_query = query if sep else base.query
    return urlunsplit((base.scheme, base.netloc, new_path, new_query, ""))


# --------------------------------------------------------------------------------------------
# Auth headers
# --------------------------------------------------------------------------------------------

_FORBIDDEN_AUTH_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te"}
)
_MAX_AUTH_DEPTH = 8


def _checked_header(name: Any, value: Any) -> tuple[str, str]:
    if not isinstance(name, str) or not _HEADER_NAME_RE.match(name):
        raise UpstreamAuthError("auth header name is not a valid HTTP header name")
    if name.lower() in _FORBIDDEN_AUTH_HEADERS:
        raise UpstreamAuthError(f"auth header {name} cannot be set")
    if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
        raise UpstreamAuthError(f"auth header {name} has an invalid value")
    return name, value


def _env_value(environ: Mapping[str, str], var: Any) -> str:
    if not isinstance(var, str) or not var:
        raise UpstreamAuthError("environment variable name is missing")
    value = environ.get(var)
    if not value:
        raise UpstreamAuthError(f"environment variable {var} is not set")
    return value


def _apply_auth(
    auth: Mapping[str, Any],
    environ: Mapping[str, str],
    out: dict[str, tuple[str, str]],
    depth: int,
) -> None:
    if depth > _MAX_AUTH_DEPTH:
        raise UpstreamAuthError("composite auth is nested too deeply")
    if not isinstance(auth, Mapping):
        raise UpstreamAuthError("auth must be an object")
    kind = auth.get("type")

    def put(name: str, value: str) -> None:
        name, value = _checked_header(name, value)
        out[name.lower()] = (name, value)

    if kind == "none":
        return
    if kind == "api-key":
        value = auth.get("value")
        if value is None:
            value = _env_value(environ, auth.get("envVar"))
        if not isinstance(value, str) or not value:
            raise UpstreamAuthError("api-key auth has no key")
        header_name = auth.get("headerName")
        if header_name:
            put(header_name, value)
        else:
            put("Authorization", f"Bearer {value}")
        return
    if kind == "custom-headers":
        headers = auth.get("headers") or {}
        env_vars = auth.get("envVars") or {}
        if not isinstance(headers, Mapping) or not isinstance(env_vars, Mapping):
            raise UpstreamAuthError("custom-headers auth needs header objects")
        for name, value in headers.items():
            put(name, value)
        for name, var in env_vars.items():
            put(name, _env_value(environ, var))
        return
    if kind == "composite":
        strategies = auth.get("strategies")
        if not isinstance(strategies, list | tuple):
            raise UpstreamAuthError("composite auth needs a list of strategies")
        for strategy in strategies:
            _apply_auth(strategy, environ, out, depth + 1)
        return
    raise UpstreamAuthError("unknown auth type")


def build_auth_headers(
    auth: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Upstream auth headers for a validated contract §5.3 auth object holding real secrets.

    ``api-key``: ``Authorization: Bearer <key>`` (or ``<headerName>: <key>``), the key from
    ``value`` or from the environment variable ``envVar``. ``custom-headers``: literal
    ``headers`` plus ``envVars`` (header -> variable name). ``none``: nothing. ``composite``:
    each strategy in order, later ones overriding earlier ones (header names compared
    case-insensitively). Raises :class:`UpstreamAuthError` (naming, never revealing, values).
    """
    env = os.environ if environ is None else environ
    out: dict[str, tuple[str, str]] = {}
    _apply_auth(auth, env, out, 1)
    return dict(out.values())


def secret_values(auth: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret the auth object sends upstream (header values, the bare key of a bearer
    header, values taken from environment variables): what upstream text is scrubbed of."""
    try:
        headers = build_auth_headers(auth, environ)
    except UpstreamAuthError:
        return []
    values: set[str] = set()
    for value in headers.values():
        values.add(value)
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token:
            values.add(token)
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


# --------------------------------------------------------------------------------------------
# HTTP clients
# --------------------------------------------------------------------------------------------

_client_lock = threading.Lock()
_sync_client: httpx.Client | None = None
_sync_client_pid: int | None = None


def _get_sync_client() -> httpx.Client:
    """The probe client: no redirects, no proxies from the environment, no keep-alive.

    No keep-alive because pinned https connections are pooled by IP (see
    :func:`pinned_request_args`) and probes are rare.
    """
    global _sync_client, _sync_client_pid
    with _client_lock:
        if _sync_client is None or _sync_client_pid != os.getpid():
            _sync_client = httpx.Client(
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=0),
            )
            _sync_client_pid = os.getpid()
        return _sync_client


class _NeedsDNS(Exception):
    pass


def _no_resolver(host: str, port: int) -> list[Any]:
    raise _NeedsDNS


class _Stream(httpcore.AsyncNetworkStream):
    """A pooled connection whose idle check is one poll() on a poll object made once.

    httpcore asks every idle connection "is_readable?" (has the server closed it?) each time it
    assigns a request, and anyio answers through several layers of attribute lookups per
    call: with dozens of pooled connections that check was a sixth of the gateway's CPU."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._sock = inner.get_extra_info("socket")
        self._poll: Any = None
        if self._sock is not None and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(self._sock.fileno(), select.POLLIN)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._poll is not None:
            try:
                return bool(self._poll.poll(0))
            except (OSError, ValueError):
                return True
        return self._inner.get_extra_info(info)


class _Backend(httpcore.AsyncNetworkBackend):
    """Connects through anyio and wraps each connection in `_Stream`. With `guarded`, it also
    resolves at connect time and connects only to an address that passes the SSRF rules, so a
    name that changes its answer after it was checked (DNS rebinding) cannot reach inside.
    URLs keep their host names: TLS SNI, certificates and connection pooling stay per host."""

    def __init__(self, *, guarded: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._guarded = guarded

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._addresses(host, port, timeout) if self._guarded else [host]
        last: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
            else:
                return _Stream(stream)
        assert last is not None
        raise last

    async def _addresses(self, host: str, port: int, timeout: float | None) -> list[str]:
        import asyncio

        from django.conf import settings

        allowed = list(settings.UPSTREAM_ALLOWED_NETWORKS)
        try:
            try:
                return resolve_and_check(
                    host, port, trusted=False, allowed_networks=allowed, resolver=_no_resolver
                )
            except _NeedsDNS:
                loop = asyncio.get_running_loop()
                resolver = resolve_host
                if resolver is _default_resolver:
                    lookup = loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                else:
                    lookup = loop.run_in_executor(None, resolver, host, port)
                try:
                    infos = await asyncio.wait_for(lookup, timeout or 5.0)
                except (OSError, UnicodeError, TimeoutError):
                    raise httpcore.ConnectError(f"could not resolve host {host}") from None
                return resolve_and_check(
                    host, port, trusted=False, allowed_networks=allowed, resolver=lambda h, p: infos
                )
        except UpstreamURLError as exc:
            raise httpcore.ConnectError(f"blocked: {exc.reason}") from None

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("blocked: unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _Transport(httpx.AsyncHTTPTransport):
    def __init__(self, *, limits: httpx.Limits, guarded: bool) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=self._pool._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_Backend(guarded=guarded),
        )


def _new_async_client(trusted: bool) -> httpx.AsyncClient:
    from django.conf import settings

    connect = float(getattr(settings, "UPSTREAM_CONNECT_TIMEOUT", 5.0))
    read = float(getattr(settings, "UPSTREAM_READ_TIMEOUT", 120.0))
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=500, keepalive_expiry=30)
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(read, connect=connect, pool=connect),
        limits=limits,
        transport=_Transport(limits=limits, guarded=not trusted),
    )


_async_clients = {
    trusted: PerLoop(functools.partial(_new_async_client, trusted)) for trusted in (True, False)
}


def get_async_client(*, trusted: bool = True) -> httpx.AsyncClient:
    """The shared ``httpx.AsyncClient`` for upstream calls (one per event loop, and per kind).

    ``trusted=False`` (org-registered models) connects only to addresses that pass the SSRF
    rules, checked after DNS resolution at every new connection. Redirects are never followed
    and proxy environment variables are ignored. Timeouts come from
    ``settings.UPSTREAM_CONNECT_TIMEOUT`` / ``UPSTREAM_READ_TIMEOUT`` (seconds).
    """
    return _async_clients[trusted].get()


# --------------------------------------------------------------------------------------------
# Probes (health checks and "test connection")
# --------------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    is_available: bool
    checked_at_ms: int
    error: str | None
    latency_ms: int | None
    status_code: int | None


_PROBE_METHODS = frozenset({"GET", "HEAD"})


def now_ms() -> int:
    return int(time.time() * 1000)


def same_origin(a: str, b: str) -> bool:
    """Whether two URLs share scheme, host and port (auth headers only go to the model's origin)."""
    pa, pb = urlsplit(a), urlsplit(b)
    port_a = pa.port or _DEFAULT_PORTS.get(pa.scheme.lower())
    port_b = pb.port or _DEFAULT_PORTS.get(pb.scheme.lower())
    return (pa.scheme.lower(), (pa.hostname or "").lower(), port_a) == (
        pb.scheme.lower(),
        (pb.hostname or "").lower(),
        port_b,
    )


def check_static_target(url: str, *, allowed_networks: list[str], field: str = "baseUrl") -> None:
    """The checks that need no DNS, for saving an org model: syntax, literal addresses and
    blocked host names. Host names are resolved and checked again at every connection."""
    validate_url_syntax(url, field=field)
    parts = urlsplit(url)
    host = parts.hostname or ""

    def no_dns(name: str, port: int) -> list[str]:
        return ["8.8.8.8"]  # a stand-in public address: names are checked at connect time

    resolve_and_check(
        host,
        parts.port or _DEFAULT_PORTS[parts.scheme.lower()],
        trusted=False,
        allowed_networks=allowed_networks,
        resolver=no_dns,
        field=field,
    )


def _exc_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _describe_connect_error(exc: BaseException) -> str:
    chain = _exc_chain(exc)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if any(isinstance(e, ssl.SSLError | ssl.CertificateError) for e in chain):
        return "TLS handshake failed"
    text = " ".join(str(e) for e in chain).lower()  # inspected, never returned
    if "connection refused" in text:
        return "connection refused"
    if "certificate" in text or "ssl" in text or "tls" in text:
        return "TLS handshake failed"
    if "unreachable" in text:
        return "network unreachable"
    return "connection failed"


def probe(
    url: str,
    *,
    method: str = "GET",
    timeout_ms: int = 5000,
    headers: Mapping[str, str] | None = None,
    trusted: bool,
    allowed_networks: list[str] | None = None,
    resolver: Resolver | None = None,
) -> ProbeResult:
    """Probe ``url`` once; never raises for network problems, never follows redirects.

    The URL is validated (syntax, then every resolved address unless ``trusted``); a refusal
    is returned as ``error="blocked: <reason>"`` without any connection attempt. The request
    goes to the validated IP (pinned, Host/SNI kept), with ``timeout_ms`` for connecting and
    for each read. Success is a 2xx status. The response body is never read. Errors look like
    ``"GET https://h/health: HTTP 503"`` and never contain the query string, userinfo, header
    values or body bytes. ``allowed_networks`` defaults to
    ``settings.UPSTREAM_ALLOWED_NETWORKS``, read at call time.
    """
    method = method.upper()
    if method not in _PROBE_METHODS:
        raise ValueError("probe method must be GET or HEAD")
    if timeout_ms < 1:
        raise ValueError("timeout_ms must be >= 1")
    if allowed_networks is None:
        from django.conf import settings

        allowed_networks = list(getattr(settings, "UPSTREAM_ALLOWED_NETWORKS", []) or [])

    def result(
        ok: bool, error: str | None, latency: int | None = None, status: int | None = None
    ) -> ProbeResult:
        return ProbeResult(ok, now_ms(), error, latency, status)

    try:
        validate_url_syntax(url)
    except UpstreamURLError as exc:
        return result(False, f"blocked: {exc.reason}")
    label = f"{method} {safe_url(url)}"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS[scheme]
    try:
        ips = resolve_and_check(
            parts.hostname or "",
            port,
            trusted=trusted,
            allowed_networks=allowed_networks,
            resolver=resolver,
        )
    except UpstreamResolveError:
        return result(False, f"{label}: could not resolve host")
    except UpstreamURLError as exc:
        return result(False, f"blocked: {exc.reason}")

    send_headers = {k: v for k, v in (headers or {}).items() if k.lower() != "host"}
    client = _get_sync_client()
    start = time.monotonic()
    deadline = start + timeout_ms / 1000
    last_error = "connection failed"
    for ip in ips:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return result(False, f"{label}: timed out after {timeout_ms} ms")
        pinned_url, host_header, extensions = pinned_request_args(url, ip)
        try:
            request = client.build_request(
                method,
                pinned_url,
                headers={**send_headers, **host_header},
                extensions=extensions,
                timeout=httpx.Timeout(remaining),
            )
            response = client.send(request, stream=True, follow_redirects=False)
        except httpx.TimeoutException:
            return result(False, f"{label}: timed out after {timeout_ms} ms")
        except httpx.ConnectError as exc:
            last_error = _describe_connect_error(exc)
            continue  # try the next validated address
        except httpx.RemoteProtocolError:
            return result(False, f"{label}: invalid HTTP response")
        except (httpx.ReadError, httpx.WriteError):
            return result(False, f"{label}: connection reset")
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError):
            return result(False, f"{label}: request failed")
        latency = int((time.monotonic() - start) * 1000)
        status = response.status_code
        response.close()  # the body is never read
        if 200 <= status < 300:
            return result(True, None, latency, status)
        if 300 <= status < 400:
            return result(False, f"{label}: redirect (3xx) not followed", latency, status)
        return result(False, f"{label}: HTTP {status}", latency, status)
    return result(False, f"{label}: {last_error}")


# --------------------------------------------------------------------------------------------
# Gateway calls (chat completions and other proxied requests)
# --------------------------------------------------------------------------------------------


class UpstreamCallError(Exception):
    """A call to a provider failed. `kind` is connect, blocked, timeout, protocol or too_large;
    `message` is safe to show (no secrets, no response bytes)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _call_error(exc: BaseException) -> UpstreamCallError:
    if isinstance(exc, httpx.TimeoutException):
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            return UpstreamCallError("timeout", "timed out connecting to the upstream")
        return UpstreamCallError("timeout", "the upstream did not answer in time")
    text = str(exc)
    if isinstance(exc, httpx.ConnectError):
        if text.startswith("blocked:"):
            return UpstreamCallError("blocked", text)
        if text.startswith("could not resolve host"):
            return UpstreamCallError("connect", text)
        return UpstreamCallError(
            "connect", f"could not connect to the upstream ({_describe_connect_error(exc)})"
        )
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return UpstreamCallError("protocol", "the upstream closed the connection unexpectedly")
    return UpstreamCallError("protocol", f"upstream request failed ({type(exc).__name__})")


class UpstreamResponse:
    """A provider's response, opened for streaming. Close it (`aclose`) when done."""

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status_code = response.status_code
        self.headers = response.headers

    async def iter_bytes(self) -> Any:
        try:
            async for data in self._response.aiter_raw():
                yield data
        except httpx.HTTPError as exc:
            raise _call_error(exc) from None

    async def read(self, limit: int) -> bytes:
        """The whole body, refusing to hold more than `limit` bytes."""
        parts: list[bytes] = []
        size = 0
        async for data in self.iter_bytes():
            size += len(data)
            if size > limit:
                raise UpstreamCallError(
                    "too_large", f"the upstream response is larger than {limit} bytes"
                )
            parts.append(data)
        return b"".join(parts)

    async def aclose(self) -> None:
        await self._response.aclose()


async def send(
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    trusted: bool,
    read_timeout: float | None = None,
) -> UpstreamResponse:
    """POST `content` to a provider and return its response with the body still unread.

    Untrusted (org) upstreams go through the SSRF-guarded client. Errors become
    UpstreamCallError with a message that is safe to show.
    """
    from django.conf import settings

    if not trusted:  # the same parser that checked the URL when it was saved decides again
        try:
            validate_url_syntax(url)
        except UpstreamURLError as exc:
            raise UpstreamCallError("blocked", f"blocked: {exc.reason}") from None
    client = get_async_client(trusted=trusted)
    connect = float(settings.UPSTREAM_CONNECT_TIMEOUT)
    read = read_timeout if read_timeout is not None else float(settings.UPSTREAM_READ_TIMEOUT)
    timeout = httpx.Timeout(read, connect=connect, pool=connect)
    try:
        request = client.build_request(
            "POST", url, content=content, headers=headers, timeout=timeout
        )
    except httpx.InvalidURL:
        raise UpstreamCallError("blocked", "blocked: the upstream URL is not valid") from None
    try:
        try:
            response = await client.send(request, stream=True)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            # The connection closed or reset before any response header (typically a kept-alive
            # connection the provider dropped as it was reused): sent once more, on a fresh
            # connection, as the providers' own clients do. Never after a response began.
            logger.info(
                "upstream connection dropped before a response (%s); retrying once",
                type(exc).__name__,
            )
            response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise _call_error(exc) from None
    return UpstreamResponse(response)
