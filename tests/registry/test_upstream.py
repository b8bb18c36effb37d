"""SSRF guard, pinning, health URLs, auth headers and probes of registry/upstream.py.

The probe tests use a real ThreadingHTTPServer on 127.0.0.1 (no HTTP mocks).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from registry import upstream
from registry.upstream import (
    ProbeResult,
    UpstreamAuthError,
    UpstreamURLError,
    build_auth_headers,
    check_address,
    join_health_url,
    pinned_request_args,
    probe,
    resolve_and_check,
    validate_url_syntax,
)

PUBLIC_IP = "93.184.215.14"
SECRET = "sk-canary-3f9c2d1e-upstream-secret"
BODY_MARKER = "BODY-MARKER-should-never-leak"

FAKE_DNS = {
    "localhost": ["127.0.0.1", "::1"],
    "public.example": [PUBLIC_IP],
    "api.example.com": [PUBLIC_IP],
    "models.example.com": [PUBLIC_IP, "2606:4700::1111"],
    "metadata.google.internal": ["169.254.169.254"],
    "ok.example": [PUBLIC_IP],
    "rebind.example": ["127.0.0.1"],
    "private.example": ["10.1.2.3"],
    "mixed.example": [PUBLIC_IP, "192.168.1.10"],
}


def fake_resolver(host: str, port: int) -> list[tuple]:
    """A getaddrinfo look-alike backed by FAKE_DNS (unknown names fail to resolve)."""
    try:
        ips = FAKE_DNS[host.rstrip(".")]
    except KeyError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
    out = []
    for ip in ips:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sockaddr = (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
        out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
    return out


def full_check(url: str, allowed: list[str] | None = None, resolver=fake_resolver) -> list[str]:
    """What an API create/update does: static syntax check, then resolve and check."""
    validate_url_syntax(url)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return resolve_and_check(
        parts.hostname or "",
        port,
        trusted=False,
        allowed_networks=allowed or [],
        resolver=resolver,
    )


# --------------------------------------------------------------------------------------------
# S1-S5: bad URL forms
# --------------------------------------------------------------------------------------------

BAD_URLS = [
    # S1 schemes
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "ftp://ftp.example.com/x",
    "dict://127.0.0.1:11211/stat",
    "data:text/plain,hello",
    "javascript:alert(1)",
    "ldap://example.com/",
    "models.example.com/v1",
    "//models.example.com/v1",
    "http:/models.example.com",
    "http://",
    "https:///v1",
    "",
    # S2 loopback / unspecified
    "http://127.0.0.1/",
    "http://127.0.0.1:8080/v1",
    "http://127.1/",
    "http://0.0.0.0/",
    "http://0/",
    "http://localhost/",
    "http://localhost./",
    "http://LOCALHOST:8000/",
    "http://api.localhost/",
    "http://[::1]/",
    "http://[::]/",
    # S3 private, link-local, metadata, CGNAT, ULA
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/v2/credentials",
    "http://100.64.0.1/",
    "http://100.100.100.200/latest/meta-data",
    "http://[fd00::1]/",
    "http://[fd00:ec2::254]/",
    "http://[fe80::1]/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://[ff02::1]/",
    # S4 alternate encodings
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0x7f.0x0.0x0.0x1/",
    "http://0177.0.0.1/",
    "http://127.000.000.001/",
    "http://017700000001/",
    "http://127.0.0.1./",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:a9fe:a9fe]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::127.0.0.1]/",
    "http://[2002:7f00:1::]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[fe80::1%25eth0]/",
    "http://%31%32%37.0.0.1/",
    "http://1.2.3.4.5/",
    # S5 parser confusion
    "http://ok.example@127.0.0.1/",
    "http://user:pass@ok.example/",
    "http://127.0.0.1#@ok.example",
    "http://ok.example#@127.0.0.1/",
    "http://127.0.0.1\\@ok.example/",
    "http://ok.example\\@127.0.0.1/",
    "http://ok.example /v1",
    " http://ok.example/",
    "http://ok.example/\n",
    "http://ok.ex\tample/",
    "http://127\u30020\u30020\u30021/",
    "http://127\uff0e0\uff0e0\uff0e1/",
    "http://\u24dbocalhost/",
    "http://ok.example:99999/",
    "http://ok.example:0/",
    "http://ok.example:/",
    "http://ok.example:80:80/",
    "http://[::1/",
    "http://::1/",
    "http://ok..example/",
    "http://-ok.example/",
    # resolved names that point inside
    "http://rebind.example/",
    "http://private.example/",
    "http://mixed.example/",
]


def test_bad_url_table_is_big_enough() -> None:
    assert len(BAD_URLS) >= 40
    assert len(set(BAD_URLS)) == len(BAD_URLS)


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_url_rejected(url: str) -> None:
    with pytest.raises(UpstreamURLError) as info:
        full_check(url)
    message = str(info.value)
    assert message.startswith("baseUrl: ")
    assert "pass" not in message  # userinfo never echoed


GOOD_URLS = [
    ("https://api.example.com/v1", [PUBLIC_IP]),
    ("https://models.example.com:8443/v1?api-version=2024-05-01", [PUBLIC_IP, "2606:4700::1111"]),
    ("http://8.8.8.8/v1", ["8.8.8.8"]),
    ("https://[2606:4700:4700::1111]/", ["2606:4700:4700::1111"]),
    ("HTTPS://API.EXAMPLE.COM/v1/", [PUBLIC_IP]),
    ("https://api.example.com./v1", [PUBLIC_IP]),
]


@pytest.mark.parametrize(("url", "ips"), GOOD_URLS)
def test_good_url_accepted(url: str, ips: list[str]) -> None:
    assert full_check(url) == ips


def test_syntax_messages_are_readable() -> None:
    with pytest.raises(UpstreamURLError, match=r"^baseUrl: scheme must be http or https$"):
        validate_url_syntax("gopher://x/")
    with pytest.raises(UpstreamURLError, match="credentials"):
        validate_url_syntax("http://admin:hunter2@api.example.com/")
    with pytest.raises(UpstreamURLError) as info:
        validate_url_syntax("http://admin:hunter2@api.example.com/")
    assert "hunter2" not in str(info.value)
    with pytest.raises(UpstreamURLError, match=r"^healthCheck\.url: "):
        validate_url_syntax("ftp://x/", field="healthCheck.url")


def test_syntax_check_allows_private_literals_for_yaml() -> None:
    # Address policy is not part of the static check: operator YAML may point at 127.0.0.1.
    validate_url_syntax("http://127.0.0.1:9000/v1")
    validate_url_syntax("http://[::1]:9000/v1")
    validate_url_syntax("http://llm_backend:8000/v1")


def test_loopback_message() -> None:
    with pytest.raises(UpstreamURLError) as info:
        full_check("http://127.0.0.1/")
    assert str(info.value) == (
        "baseUrl: host 127.0.0.1 is a loopback address; "
        "private, loopback and link-local addresses are not allowed"
    )


# --------------------------------------------------------------------------------------------
# check_address and allowlist mode
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.0.1",
        "169.254.1.1",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:192.168.0.1",
    ],
)
def test_check_address_blocks_non_global(ip: str) -> None:
    with pytest.raises(UpstreamURLError):
        check_address(ipaddress.ip_address(ip), [])


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_check_address_allows_global(ip: str) -> None:
    check_address(ipaddress.ip_address(ip), [])


def test_allowlist_lets_loopback_through() -> None:
    allowed = ["127.0.0.0/8"]
    check_address(ipaddress.ip_address("127.0.0.1"), allowed)
    check_address(ipaddress.ip_address("::ffff:127.0.0.1"), allowed)
    assert full_check("http://127.0.0.1:9000/v1", allowed) == ["127.0.0.1"]
    assert full_check("http://rebind.example/", allowed) == ["127.0.0.1"]
    # Other private ranges stay blocked.
    with pytest.raises(UpstreamURLError):
        full_check("http://10.0.0.1/", allowed)
    with pytest.raises(UpstreamURLError):
        full_check("http://[::1]/", allowed)


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("169.254.169.254", ["169.254.0.0/16"]),
        ("169.254.170.2", ["169.254.0.0/16"]),
        ("100.100.100.200", ["100.64.0.0/10"]),
        ("fd00:ec2::254", ["fc00::/7"]),
        ("::ffff:169.254.169.254", ["169.254.0.0/16", "::/0"]),
        ("169.254.169.254", ["0.0.0.0/0"]),
    ],
)
def test_metadata_blocked_even_when_allowlisted(ip: str, allowed: list[str]) -> None:
    with pytest.raises(UpstreamURLError, match="metadata"):
        check_address(ipaddress.ip_address(ip), allowed)


def test_metadata_url_blocked_even_when_allowlisted() -> None:
    with pytest.raises(UpstreamURLError):
        full_check("http://169.254.169.254/latest/meta-data/", ["169.254.0.0/16"])
    # But the rest of an allowlisted link-local range is reachable.
    assert full_check("http://169.254.10.10/", ["169.254.0.0/16"]) == ["169.254.10.10"]


def test_invalid_allowlist_entry_is_reported() -> None:
    with pytest.raises(ValueError, match="UPSTREAM_ALLOWED_NETWORKS"):
        check_address(ipaddress.ip_address("10.0.0.1"), ["not-a-cidr"])


# --------------------------------------------------------------------------------------------
# resolve_and_check: numeric forms, host names, rebinding, trusted mode
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "127.1", "0", "0177.0.0.1", "127.000.000.001", "0x7f.1"],
)
def test_numeric_ipv4_forms_rejected(host: str) -> None:
    with pytest.raises(UpstreamURLError):
        resolve_and_check(host, 80, trusted=False, allowed_networks=[], resolver=fake_resolver)


def test_numeric_public_form_still_rejected_as_non_canonical() -> None:
    # 0x08080808 is 8.8.8.8: public, but ambiguous spellings are refused anyway.
    with pytest.raises(UpstreamURLError, match="non-canonical"):
        resolve_and_check("0x08080808", 80, trusted=False, allowed_networks=[])


@pytest.mark.parametrize(
    "host", ["localhost", "localhost.", "LocalHost", "foo.localhost", "metadata.google.internal"]
)
def test_blocked_host_names_never_resolved(host: str) -> None:
    calls: list[str] = []

    def resolver(name: str, port: int) -> list[str]:
        calls.append(name)
        return [PUBLIC_IP]

    with pytest.raises(UpstreamURLError):
        resolve_and_check(host, 80, trusted=False, allowed_networks=[], resolver=resolver)
    assert calls == []


def test_dns_rebinding_blocked() -> None:
    """public.example answers public first, then loopback: the second check refuses it."""
    answers = iter([[PUBLIC_IP], ["127.0.0.1"]])

    def rebinding_resolver(host: str, port: int) -> list[str]:
        return next(answers)

    kwargs = {"trusted": False, "allowed_networks": [], "resolver": rebinding_resolver}
    assert resolve_and_check("public.example", 443, **kwargs) == [PUBLIC_IP]
    with pytest.raises(UpstreamURLError, match="resolves to 127.0.0.1"):
        resolve_and_check("public.example", 443, **kwargs)


def test_every_resolved_address_is_checked() -> None:
    with pytest.raises(UpstreamURLError, match="192.168.1.10"):
        resolve_and_check(
            "mixed.example", 80, trusted=False, allowed_networks=[], resolver=fake_resolver
        )


def test_resolver_accepts_plain_strings_and_dedupes() -> None:
    ips = resolve_and_check(
        "api.example.com",
        443,
        trusted=False,
        allowed_networks=[],
        resolver=lambda h, p: [PUBLIC_IP, PUBLIC_IP, "2606:4700::1111"],
    )
    assert ips == [PUBLIC_IP, "2606:4700::1111"]


def test_unresolvable_host() -> None:
    with pytest.raises(upstream.UpstreamResolveError, match="could not be resolved"):
        resolve_and_check(
            "nope.example", 80, trusted=False, allowed_networks=[], resolver=fake_resolver
        )


def test_trusted_skips_address_checks_but_resolves() -> None:
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    kw = {"trusted": True, "allowed_networks": []}
    assert resolve_and_check("localhost", 80, resolver=resolver, **kw) == ["127.0.0.1"]
    assert calls == ["localhost"]
    assert resolve_and_check("127.0.0.1", 80, **kw) == ["127.0.0.1"]
    assert resolve_and_check("[::1]", 80, **kw) == ["::1"]
    assert resolve_and_check("127.1", 80, **kw) == ["127.0.0.1"]
    assert resolve_and_check("169.254.169.254", 80, **kw) == ["169.254.169.254"]
    assert resolve_and_check("rebind.example", 80, resolver=fake_resolver, **kw) == ["127.0.0.1"]


# --------------------------------------------------------------------------------------------
# Pinning
# --------------------------------------------------------------------------------------------


def test_pinned_request_args_https() -> None:
    url, headers, ext = pinned_request_args("https://api.example.com/v1/chat?x=1", PUBLIC_IP)
    assert url == f"https://{PUBLIC_IP}/v1/chat?x=1"
    assert headers == {"Host": "api.example.com"}
    assert ext == {"sni_hostname": "api.example.com"}


def test_pinned_request_args_port_ipv6_and_http() -> None:
    url, headers, ext = pinned_request_args("http://models.example.com:8080/v1", "2606:4700::1")
    assert url == "http://[2606:4700::1]:8080/v1"
    assert headers == {"Host": "models.example.com:8080"}
    assert ext == {}
    url, headers, ext = pinned_request_args("https://[2606:4700::1]:8443/", "2606:4700::1")
    assert url == "https://[2606:4700::1]:8443/"
    assert headers == {"Host": "[2606:4700::1]:8443"}
    assert ext == {}  # no SNI for IP literals
    url, headers, _ = pinned_request_args("https://api.example.com:443/", PUBLIC_IP)
    assert url == f"https://{PUBLIC_IP}:443/"
    assert headers == {"Host": "api.example.com"}
    _, headers, ext = pinned_request_args("https://api.example.com./v1", PUBLIC_IP)
    assert headers == {"Host": "api.example.com."}
    assert ext == {"sni_hostname": "api.example.com"}


# --------------------------------------------------------------------------------------------
# join_health_url (api-contract §5.9)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("https://h/v1", "/health", "https://h/health"),
        ("https://h/v1", "health", "https://h/v1/health"),
        ("https://h/v1/", "health", "https://h/v1/health"),
        ("https://h/v1/", "/health", "https://h/health"),
        ("https://h", "health", "https://h/health"),
        ("https://h", "/health", "https://h/health"),
        ("https://h:8443/a/b", "c/d", "https://h:8443/a/b/c/d"),
        ("https://h/v1", "/health?deep=1", "https://h/health?deep=1"),
        ("https://h/v1", "status?x=1&y=2", "https://h/v1/status?x=1&y=2"),
        ("https://h/v1?api-version=2", "health", "https://h/v1/health?api-version=2"),
        ("https://h/v1?api-version=2", "health?a=b", "https://h/v1/health?a=b"),
        ("https://h/v1", "/", "https://h/"),
    ],
)
def test_join_health_url(base: str, path: str, expected: str) -> None:
    assert join_health_url(base, path) == expected


@pytest.mark.parametrize("path", ["//evil.example/x", "", "a b", "a\\b", "x#frag", "h\u00e9"])
def test_join_health_url_rejects(path: str) -> None:
    with pytest.raises(UpstreamURLError):
        join_health_url("https://h/v1", path)


def test_join_health_url_needs_base() -> None:
    with pytest.raises(UpstreamURLError, match="baseUrl is required"):
        join_health_url(None, "/health")


def test_join_health_url_never_changes_host() -> None:
    for path in ["http://evil.example/", "@evil.example/", "..//evil.example", ":80@evil/"]:
        joined = join_health_url("https://h/v1", path)
        assert urlsplit(joined).hostname == "h"


# --------------------------------------------------------------------------------------------
# build_auth_headers (api-contract §5.3)
# --------------------------------------------------------------------------------------------


def test_auth_api_key_value() -> None:
    assert build_auth_headers({"type": "api-key", "value": "sk-1"}, {}) == {
        "Authorization": "Bearer sk-1"
    }


def test_auth_api_key_header_name() -> None:
    auth = {"type": "api-key", "value": "sk-1", "headerName": "api-key"}
    assert build_auth_headers(auth, {}) == {"api-key": "sk-1"}


def test_auth_api_key_env_var() -> None:
    auth = {"type": "api-key", "envVar": "PROVIDER_KEY"}
    assert build_auth_headers(auth, {"PROVIDER_KEY": "sk-env"}) == {
        "Authorization": "Bearer sk-env"
    }


def test_auth_api_key_env_var_default_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_TEST_KEY_X", "sk-from-os")
    auth = {"type": "api-key", "envVar": "UPSTREAM_TEST_KEY_X"}
    assert build_auth_headers(auth) == {"Authorization": "Bearer sk-from-os"}


def test_auth_missing_env_var_names_only_the_variable() -> None:
    auth = {"type": "api-key", "envVar": "MISSING_KEY"}
    with pytest.raises(UpstreamAuthError) as info:
        build_auth_headers(auth, {"OTHER": SECRET})
    assert str(info.value) == "environment variable MISSING_KEY is not set"
    assert isinstance(info.value, ValueError)


def test_auth_custom_headers() -> None:
    auth = {
        "type": "custom-headers",
        "headers": {"X-Api-Key": "literal", "X-Team": "t1"},
        "envVars": {"X-Env-Key": "ENV_KEY"},
    }
    assert build_auth_headers(auth, {"ENV_KEY": "from-env"}) == {
        "X-Api-Key": "literal",
        "X-Team": "t1",
        "X-Env-Key": "from-env",
    }
    with pytest.raises(UpstreamAuthError, match="environment variable ENV_KEY is not set"):
        build_auth_headers(auth, {})


def test_auth_none() -> None:
    assert build_auth_headers({"type": "none"}, {}) == {}


def test_auth_composite_order_and_case_insensitive_override() -> None:
    auth = {
        "type": "composite",
        "strategies": [
            {"type": "api-key", "value": "first"},
            {"type": "custom-headers", "headers": {"X-Org": "o1", "authorization": "Token second"}},
            {
                "type": "composite",
                "strategies": [
                    {"type": "none"},
                    {"type": "custom-headers", "headers": {"x-org": "o2"}},
                ],
            },
        ],
    }
    assert build_auth_headers(auth, {}) == {"authorization": "Token second", "x-org": "o2"}


def test_auth_rejects_bad_headers_without_echoing_values() -> None:
    for auth in [
        {"type": "custom-headers", "headers": {"X-Key": f"{SECRET}\r\nX-Injected: 1"}},
        {"type": "custom-headers", "headers": {"Host": SECRET}},
        {"type": "custom-headers", "headers": {"Bad Name": SECRET}},
        {"type": "api-key", "value": SECRET, "headerName": "bad:name"},
        {"type": "unknown"},
    ]:
        with pytest.raises(UpstreamAuthError) as info:
            build_auth_headers(auth, {})
        assert SECRET not in str(info.value)


# --------------------------------------------------------------------------------------------
# probe() against a real local HTTP server
# --------------------------------------------------------------------------------------------


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.connections = 0
        self.redirect_target = "http://127.0.0.1:6379/"

    def verify_request(self, request, client_address) -> bool:  # type: ignore[override]
        self.connections += 1
        return True

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    server: _RecordingServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: str, extra: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Leak", f"header-{BODY_MARKER}")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self) -> None:
        self.server.requests.append((self.command, self.path, dict(self.headers.items())))
        path = self.path.split("?", 1)[0]
        if path == "/ok":
            self._reply(200, f"ok {BODY_MARKER}")
        elif path == "/fail":
            self._reply(503, f"down {BODY_MARKER} {SECRET}")
        elif path == "/slow":
            time.sleep(1.5)
            self._reply(200, "late")
        elif path == "/redirect":
            self._reply(302, BODY_MARKER, {"Location": self.server.redirect_target})
        else:
            self._reply(404, BODY_MARKER)

    do_GET = _handle
    do_HEAD = _handle


def _start(server: _RecordingServer) -> Iterator[_RecordingServer]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_server() -> Iterator[_RecordingServer]:
    yield from _start(_RecordingServer())


@pytest.fixture
def canary_server() -> Iterator[_RecordingServer]:
    """A second listener that must never be contacted."""
    yield from _start(_RecordingServer())


LOOPBACK_OK = ["127.0.0.0/8"]


def _probe(url: str, **kwargs) -> ProbeResult:
    kwargs.setdefault("trusted", False)
    kwargs.setdefault("allowed_networks", LOOPBACK_OK)
    return probe(url, **kwargs)


def _assert_clean(result: ProbeResult) -> None:
    text = result.error or ""
    assert BODY_MARKER not in text
    assert SECRET not in text
    assert "token=" not in text


def test_probe_200(http_server: _RecordingServer) -> None:
    before = upstream.now_ms()
    result = _probe(
        f"http://127.0.0.1:{http_server.port}/ok?token=abc",
        headers={"Authorization": f"Bearer {SECRET}"},
    )
    assert result.is_available is True
    assert result.error is None
    assert result.status_code == 200
    assert result.latency_ms is not None and result.latency_ms >= 0
    assert result.checked_at_ms >= before
    [(method, path, headers)] = http_server.requests
    assert (method, path) == ("GET", "/ok?token=abc")
    assert headers["Host"] == f"127.0.0.1:{http_server.port}"
    assert headers["Authorization"] == f"Bearer {SECRET}"


def test_probe_head(http_server: _RecordingServer) -> None:
    result = _probe(f"http://127.0.0.1:{http_server.port}/ok", method="HEAD")
    assert result.is_available is True
    assert http_server.requests[0][0] == "HEAD"


def test_probe_pins_resolved_ip_and_keeps_host_header(http_server: _RecordingServer) -> None:
    """The client never does its own DNS lookup: the name below does not exist."""
    result = _probe(
        f"http://upstream.invalid:{http_server.port}/ok",
        resolver=lambda host, port: ["127.0.0.1"],
    )
    assert result.is_available is True, result.error
    [(_, _, headers)] = http_server.requests
    assert headers["Host"] == f"upstream.invalid:{http_server.port}"


def test_probe_503(http_server: _RecordingServer) -> None:
    url = f"http://127.0.0.1:{http_server.port}/fail?token=abc"
    result = _probe(url, headers={"Authorization": f"Bearer {SECRET}", "X-Key": SECRET})
    assert result.is_available is False
    assert result.status_code == 503
    assert result.error == f"GET http://127.0.0.1:{http_server.port}/fail: HTTP 503"
    _assert_clean(result)


def test_probe_timeout(http_server: _RecordingServer) -> None:
    started = time.monotonic()
    result = _probe(f"http://127.0.0.1:{http_server.port}/slow", timeout_ms=200)
    elapsed = time.monotonic() - started
    assert result.is_available is False
    assert result.error == f"GET http://127.0.0.1:{http_server.port}/slow: timed out after 200 ms"
    assert result.status_code is None
    assert elapsed < 1.2


def test_probe_redirect_not_followed(
    http_server: _RecordingServer, canary_server: _RecordingServer
) -> None:
    for target in ["http://127.0.0.1:6379/", f"http://127.0.0.1:{canary_server.port}/ok"]:
        http_server.redirect_target = target
        result = _probe(
            f"http://127.0.0.1:{http_server.port}/redirect",
            headers={"Authorization": f"Bearer {SECRET}"},
        )
        assert result.is_available is False
        assert result.status_code == 302
        assert result.error == (
            f"GET http://127.0.0.1:{http_server.port}/redirect: redirect (3xx) not followed"
        )
        assert "6379" not in result.error
        _assert_clean(result)
    assert len(http_server.requests) == 2
    assert canary_server.connections == 0
    assert canary_server.requests == []


def test_probe_connection_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    result = _probe(
        f"http://127.0.0.1:{port}/health?key={SECRET}", headers={"X-Key": SECRET}, timeout_ms=2000
    )
    assert result.is_available is False
    assert result.error == f"GET http://127.0.0.1:{port}/health: connection refused"
    _assert_clean(result)


def test_probe_blocked_never_connects(http_server: _RecordingServer, settings) -> None:
    settings.UPSTREAM_ALLOWED_NETWORKS = []
    url = f"http://127.0.0.1:{http_server.port}/ok"
    result = probe(url, trusted=False)  # allowlist read from settings at call time
    assert result.is_available is False
    assert result.error is not None and result.error.startswith("blocked: ")
    assert "loopback" in result.error
    assert result.status_code is None and result.latency_ms is None
    for bad in [
        f"http://localhost:{http_server.port}/ok",
        f"http://2130706433:{http_server.port}/ok",
        f"http://[::ffff:127.0.0.1]:{http_server.port}/ok",
        f"http://x@127.0.0.1:{http_server.port}/ok",
        f"gopher://127.0.0.1:{http_server.port}/ok",
    ]:
        assert probe(bad, trusted=False).error.startswith("blocked: ")
    # DNS rebinding: a public-looking name that resolves to loopback.
    rebound = probe(
        f"http://public.example:{http_server.port}/ok",
        trusted=False,
        resolver=lambda host, port: ["127.0.0.1"],
    )
    assert rebound.error is not None and rebound.error.startswith("blocked: ")
    time.sleep(0.05)
    assert http_server.connections == 0
    assert http_server.requests == []


def test_probe_reads_allowlist_from_settings(http_server: _RecordingServer, settings) -> None:
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    result = probe(f"http://127.0.0.1:{http_server.port}/ok", trusted=False)
    assert result.is_available is True


def test_probe_trusted_skips_address_checks(http_server: _RecordingServer, settings) -> None:
    settings.UPSTREAM_ALLOWED_NETWORKS = []
    result = probe(f"http://127.0.0.1:{http_server.port}/ok", trusted=True)
    assert result.is_available is True


def _self_signed_cert(tmp_path: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_probe_https_pins_ip_but_sends_sni_of_the_host(tmp_path: Path) -> None:
    """TLS to the pinned IP carries the real host name as SNI; an untrusted cert fails."""
    import ssl

    cert_path, key_path = _self_signed_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    seen_sni: list[str | None] = []
    context.sni_callback = lambda sock, server_name, ctx: seen_sni.append(server_name)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5)
    port = listener.getsockname()[1]

    def serve_one() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        try:
            with context.wrap_socket(conn, server_side=True):
                pass
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        result = _probe(
            f"https://models.invalid:{port}/health",
            resolver=lambda host, p: ["127.0.0.1"],
            headers={"Authorization": f"Bearer {SECRET}"},
            timeout_ms=3000,
        )
        thread.join(5)
    finally:
        listener.close()
    assert seen_sni == ["models.invalid"]
    assert result.is_available is False
    assert result.error == f"GET https://models.invalid:{port}/health: TLS handshake failed"
    _assert_clean(result)


def test_probe_unresolvable_host() -> None:
    result = _probe("http://nope.invalid/health", resolver=fake_resolver)
    assert result.is_available is False
    assert result.error == "GET http://nope.invalid/health: could not resolve host"


def test_probe_rejects_other_methods() -> None:
    with pytest.raises(ValueError):
        probe("https://api.example.com/", method="POST", trusted=True)


def test_async_client_is_shared_per_loop_and_trust(settings) -> None:
    import asyncio

    async def clients() -> tuple[object, object, object]:
        return (
            upstream.get_async_client(),
            upstream.get_async_client(),
            upstream.get_async_client(trusted=False),
        )

    first, second, guarded = asyncio.run(clients())
    assert first is second
    assert guarded is not first
    assert first.follow_redirects is False and guarded.follow_redirects is False


def test_guarded_client_refuses_loopback_without_connecting(settings) -> None:
    import asyncio

    import httpx

    settings.UPSTREAM_ALLOWED_NETWORKS = []

    async def call() -> str:
        client = upstream.get_async_client(trusted=False)
        try:
            await client.get("http://127.0.0.1:9/x")
        except httpx.ConnectError as exc:
            return str(exc)
        return "connected"

    assert asyncio.run(call()).startswith("blocked:")


# --------------------------------------------------------------------------------------------
# S11: the only HTTP client import
# --------------------------------------------------------------------------------------------

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCANNED_DIRS = ["registry", "orgs", "dashboard", "gateway", "batches"]
HTTPX_IMPORT = re.compile(
    r"^\s*(?:import\s+(?:httpx|httpcore)\b|from\s+(?:httpx|httpcore)\b)"
    r"|import_module\(\s*['\"](?:httpx|httpcore)|__import__\(\s*['\"](?:httpx|httpcore)",
    re.MULTILINE,
)


def test_only_upstream_module_imports_httpx() -> None:
    allowed = PROJECT_ROOT / "registry" / "upstream.py"
    offenders = []
    scanned = 0
    for name in SCANNED_DIRS:
        directory = PROJECT_ROOT / name
        if not directory.is_dir():
            continue
        for path in directory.rglob("*.py"):
            scanned += 1
            if path == allowed:
                continue
            if HTTPX_IMPORT.search(path.read_text(encoding="utf-8", errors="replace")):
                offenders.append(str(path.relative_to(PROJECT_ROOT)))
    assert scanned > 0
    assert HTTPX_IMPORT.search(allowed.read_text(encoding="utf-8"))
    assert offenders == [], f"httpx imported outside registry/upstream.py: {offenders}"
