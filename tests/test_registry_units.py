"""The registry client's pure parts, without a network: references, auth parsing,
credential files, retry policy, range planning and the multipart parser."""

from __future__ import annotations

import base64
import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkah.errors import InputError
from chunkah.registry.auth import (
    Credentials,
    TokenCache,
    auth_file_paths,
    basic_authorization,
    load_credentials,
    parse_challenges,
)
from chunkah.registry.ranges import (
    RANGE_LINE_OVERHEAD,
    MultipartByteRangesParser,
    MultipartError,
    Span,
    halve,
    merge_ranges,
    multipart_boundary,
    parse_content_range,
    plan_requests,
    range_header,
    validate_ranges,
)
from chunkah.registry.reference import parse_registry_reference
from chunkah.registry.retry import RetryPolicy, is_retryable_status, parse_retry_after

# -- references --


@pytest.mark.parametrize(
    ("text", "registry", "repo", "tag", "digest", "endpoint"),
    [
        ("docker://debian", "docker.io", "library/debian", None, None, "registry-1.docker.io"),
        ("docker://debian:12", "docker.io", "library/debian", "12", None, "registry-1.docker.io"),
        ("docker://user/app:v1", "docker.io", "user/app", "v1", None, "registry-1.docker.io"),
        (
            "docker://index.docker.io/library/x",
            "docker.io",
            "library/x",
            None,
            None,
            "registry-1.docker.io",
        ),
        ("docker://quay.io/org/app:1.2", "quay.io", "org/app", "1.2", None, "quay.io"),
        ("docker://localhost/app", "localhost", "app", None, None, "localhost"),
        ("docker://127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000", "a/b/c", "t", None, "127.0.0.1:5000"),
        ("docker://[::1]:5000/app", "[::1]:5000", "app", None, None, "[::1]:5000"),
        (
            "docker://ghcr.io/o/a:t@sha256:" + "a" * 64,
            "ghcr.io",
            "o/a",
            "t",
            "sha256:" + "a" * 64,
            "ghcr.io",
        ),
        ("ghcr.io/o/a__b-c.d", "ghcr.io", "o/a__b-c.d", None, None, "ghcr.io"),
    ],
)
def test_reference_parsing(
    text: str, registry: str, repo: str, tag: str | None, digest: str | None, endpoint: str
) -> None:
    ref = parse_registry_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)
    assert ref.endpoint == endpoint
    assert ref.reference == (digest or tag or "latest")
    assert parse_registry_reference(str(ref)) == ref


@pytest.mark.parametrize(
    "text",
    [
        "docker://",
        "docker:///app",
        "docker://Quay.io/Org/App",
        "docker://quay.io/org/App",
        "docker://quay.io/org/app:",
        "docker://quay.io/org/app:-bad",
        "docker://quay.io/org/app@sha256:abc",
        "docker://quay.io/org//app",
        "docker://quay.io/org/app:" + "t" * 129,
        "docker://x.io/" + "a" * 300,
    ],
)
def test_reference_errors(text: str) -> None:
    with pytest.raises(InputError):
        parse_registry_reference(text)


def test_reference_loopback() -> None:
    assert parse_registry_reference("docker://127.0.0.1:5000/a").is_loopback
    assert parse_registry_reference("docker://localhost/a").is_loopback
    assert not parse_registry_reference("docker://quay.io/a").is_loopback


# -- challenges and credentials --


def test_challenge_docker_hub() -> None:
    (ch,) = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/debian:pull"'
    )
    assert ch.scheme == "bearer"
    assert ch.realm == "https://auth.docker.io/token"
    assert ch.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/debian:pull",
    }


def test_challenge_several_and_odd_spacing() -> None:
    chs = parse_challenges(
        'Basic realm="Registry Realm" , Bearer  realm = "https://a/t" ,error="insufficient_scope",'
        " Negotiate, Other abc=="
    )
    assert [c.scheme for c in chs] == ["basic", "bearer", "negotiate", "other"]
    assert chs[1].params == {"realm": "https://a/t", "error": "insufficient_scope"}
    assert chs[3].token68 == "abc=="


def test_challenge_quoted_escapes() -> None:
    (ch,) = parse_challenges(r'Bearer realm="a,b\"c", scope="repository:x:pull,push"')
    assert ch.params["realm"] == 'a,b"c'
    assert ch.params["scope"] == "repository:x:pull,push"


@pytest.mark.parametrize("bad", ['Bearer realm="open', 'Bearer realm="x" junk', "Bearer realm=x;y"])
def test_challenge_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_challenges(bad)


def _auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_credentials_files_order_and_namespaces(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    (runtime / "containers").mkdir(parents=True)
    (runtime / "containers" / "auth.json").write_text(
        json.dumps(
            {
                "auths": {
                    "quay.io": _auth_entry("host", "pw1"),
                    "quay.io/team": _auth_entry("team", "pw2"),
                    "https://index.docker.io/v1/": _auth_entry("hub", "pw3"),
                }
            }
        )
    )
    docker = tmp_path / "home" / ".docker"
    docker.mkdir(parents=True)
    (docker / "config.json").write_text(
        json.dumps(
            {"auths": {"ghcr.io": {"identitytoken": "refresh"}, "quay.io": _auth_entry("d", "d")}}
        )
    )
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(runtime)}
    assert auth_file_paths(env)[0] == runtime / "containers" / "auth.json"
    assert load_credentials("quay.io", "team/app", env=env) == Credentials("team", "pw2")
    assert load_credentials("quay.io", "other/app", env=env) == Credentials("host", "pw1")
    assert load_credentials("docker.io", "library/debian", env=env) == Credentials("hub", "pw3")
    assert load_credentials("ghcr.io", "o/a", env=env) == Credentials(identity_token="refresh")
    assert load_credentials("example.com", "a", env=env) is None
    explicit = tmp_path / "explicit.json"
    explicit.write_text(json.dumps({"auths": {"quay.io": _auth_entry("x", "y:z")}}))
    env["REGISTRY_AUTH_FILE"] = str(explicit)
    creds = load_credentials("quay.io", "team/app", env=env)
    assert creds == Credentials("x", "y:z")
    assert basic_authorization(creds) == "Basic " + base64.b64encode(b"x:y:z").decode()
    assert "y:z" not in repr(creds)


def test_credentials_bad_files_are_skipped(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"auths": {"r.io": _auth_entry("u", "p")}}))
    assert load_credentials("r.io", paths=[tmp_path / "missing.json", bad, good]) == Credentials(
        "u", "p"
    )
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"auths": {"r.io": {"auth": "!!!"}}}))
    with pytest.raises(InputError):
        load_credentials("r.io", paths=[broken])


def test_token_cache_expiry() -> None:
    now = [100.0]
    cache = TokenCache(clock=lambda: now[0])
    cache.put("realm", "svc", "repository:a:pull", "t1", 60)
    assert cache.get("realm", "svc", "repository:a:pull") == "t1"
    assert cache.get("realm", "svc", "repository:b:pull") is None
    now[0] += 53.9
    assert cache.get("realm", "svc", "repository:a:pull") == "t1"
    now[0] += 0.2  # refreshed a little before the server's expiry
    assert cache.get("realm", "svc", "repository:a:pull") is None


# -- retry policy --


def test_retry_policy() -> None:
    policy = RetryPolicy(attempts=4, base_delay=0.5, max_delay=3.0, max_retry_after=10)
    rng = random.Random(0)
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        d = policy.delay(attempt, rng=rng)
        assert cap / 2 <= d <= cap
    # Retry-After: never sooner than asked, stretched by up to retry_after_spread (25 %).
    assert 2.5 <= policy.delay(1, retry_after=2.5) <= 2.5 * 1.25
    assert 10 <= policy.delay(1, retry_after=1000) <= 10 * 1.25
    assert [
        s for s in (400, 401, 404, 408, 416, 429, 500, 501, 502, 503, 504) if is_retryable_status(s)
    ] == [
        408,
        429,
        500,
        502,
        503,
        504,
    ]


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0


# -- range planning --


def test_validate_ranges() -> None:
    assert validate_ranges([(0, 1), (5, 5)], 10) == [Span(0, 1), Span(5, 10)]
    for bad in [(-1, 1), (0, 0), (5, 6)]:
        with pytest.raises(ValueError):
            validate_ranges([bad], 10)
    assert validate_ranges([(100, 1)], None) == [Span(100, 101)]


def test_merge_ranges() -> None:
    spans = [Span(50, 60), Span(0, 10), Span(5, 12), Span(12, 20), Span(30, 40), Span(61, 62)]
    assert merge_ranges(spans) == [Span(0, 20), Span(30, 40), Span(50, 60), Span(61, 62)]
    assert merge_ranges(spans, max_gap=1) == [Span(0, 20), Span(30, 40), Span(50, 62)]
    assert merge_ranges(spans, max_gap=9) == [Span(0, 20), Span(30, 40), Span(50, 62)]
    assert merge_ranges(spans, max_gap=10) == [Span(0, 62)]
    assert merge_ranges([Span(0, 100), Span(10, 20)]) == [Span(0, 100)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 500)), min_size=1, max_size=60),
    st.integers(0, 300),
)
def test_merge_ranges_covers_exactly(pairs: list[tuple[int, int]], gap: int) -> None:
    spans = validate_ranges(pairs, None)
    merged = merge_ranges(spans, max_gap=gap)
    for a, b in itertools.pairwise(merged):
        assert b.start - a.end > gap  # disjoint, gaps above the threshold
    for s in spans:
        assert any(m.start <= s.start and s.end <= m.end for m in merged)
    for m in merged:  # every merged span starts and ends at a requested edge
        assert any(s.start == m.start for s in spans) and any(s.end == m.end for s in spans)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 10**12), min_size=1, max_size=400, unique=True),
    st.integers(1, 50),
    st.integers(RANGE_LINE_OVERHEAD + 41, 2000),
)
def test_plan_requests_limits(starts: list[int], max_ranges: int, max_header: int) -> None:
    spans = [Span(s * 3, s * 3 + 2) for s in sorted(starts)]
    groups = plan_requests(spans, max_ranges=max_ranges, max_header_bytes=max_header)
    assert [s for g in groups for s in g] == spans
    for g in groups:
        assert 1 <= len(g) <= max_ranges
        assert len(f"Range: {range_header(g)}\r\n") <= max_header
    halves = [h for g in groups for h in halve(g)]
    assert [s for h in halves for s in h] == spans


def test_plan_requests_8k_header() -> None:
    spans = [Span(i * 10_000_000_000, i * 10_000_000_000 + 16384) for i in range(10_000)]
    groups = plan_requests(spans, max_ranges=10_000, max_header_bytes=8192)
    assert all(len(f"Range: {range_header(g)}\r\n") <= 8192 for g in groups)
    assert len(groups) < 40  # ~28 bytes a range: about 290 ranges a request
    with pytest.raises(ValueError):
        plan_requests(spans, max_ranges=0, max_header_bytes=8192)


def test_content_range() -> None:
    assert parse_content_range("bytes 0-499/1234").span == Span(0, 500)
    assert parse_content_range("bytes 0-499/1234").total == 1234
    assert parse_content_range("bytes 10-10/*").total is None
    unsat = parse_content_range("bytes */1234")
    assert unsat.span is None and unsat.total == 1234
    for bad in ["bytes 5-4/10", "bytes 0-10/10", "0-4/10", "bytes=0-4/10", "bytes 0-4", ""]:
        with pytest.raises(MultipartError):
            parse_content_range(bad)


def test_multipart_boundary() -> None:
    assert multipart_boundary("multipart/byteranges; boundary=abc123") == "abc123"
    assert multipart_boundary('Multipart/ByteRanges;boundary="a b:c"') == "a b:c"
    assert multipart_boundary("multipart/byteranges; charset=x; boundary=z") == "z"
    assert multipart_boundary("multipart/mixed; boundary=abc") is None
    assert multipart_boundary("application/octet-stream") is None
    assert multipart_boundary("multipart/byteranges") is None


# -- the multipart parser --


def build_multipart(
    blob: bytes, spans: list[Span], boundary: str, *, go_style: bool = True, preamble: bytes = b""
) -> bytes:
    """A body as Go's ServeContent (``go_style``) or as an RFC 2046 writer with CRLF
    before the first delimiter would write it."""
    out = [preamble]
    for i, s in enumerate(spans):
        lead = b"" if (i == 0 and go_style and not preamble) else b"\r\n"
        out.append(
            lead
            + f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: bytes {s.start}-{s.end - 1}/{len(blob)}\r\n\r\n".encode()
        )
        out.append(blob[s.start : s.end])
    out.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(out)


def parse_all(
    body: bytes, spans: list[Span], total: int | None, cuts: list[int], boundary: str
) -> dict[Span, bytes]:
    parser = MultipartByteRangesParser(boundary, spans, total)
    got: dict[Span, bytearray] = {}
    pos = 0
    for cut in [*sorted(cuts), len(body)]:
        for piece in parser.feed(body[pos:cut]):
            buf = got.setdefault(piece.span, bytearray())
            assert piece.offset == len(buf)
            buf += piece.data
        pos = max(pos, cut)
    parser.close()
    assert parser.done
    return {k: bytes(v) for k, v in got.items()}


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=1, max_size=3000),
    st.lists(st.tuples(st.integers(0, 2999), st.integers(1, 400)), min_size=1, max_size=12),
    st.lists(st.integers(0, 20_000), max_size=25),
    st.booleans(),
    st.sampled_from(["b", "3d6b6a416f9b5", "chunkah-test-boundary", "--x--"]),
    st.randoms(use_true_random=False),
)
def test_multipart_roundtrip(
    blob: bytes,
    pairs: list[tuple[int, int]],
    cuts: list[int],
    go_style: bool,
    boundary: str,
    rnd: random.Random,
) -> None:
    pairs = [(o % len(blob), min(n, len(blob) - o % len(blob))) for o, n in pairs]
    spans = merge_ranges(validate_ranges(pairs, len(blob)))
    order = list(spans)
    rnd.shuffle(order)  # servers may send parts in any order
    body = build_multipart(blob, order, boundary, go_style=go_style)
    got = parse_all(body, spans, len(blob), cuts, boundary)
    assert got == {s: blob[s.start : s.end] for s in spans}


def test_multipart_blank_lead_and_epilogue() -> None:
    blob = bytes(range(256)) * 4
    spans = [Span(0, 10), Span(100, 300)]
    body = build_multipart(blob, spans, "B", preamble=b"\r\n\r\n") + b"epilogue\r\n"
    assert parse_all(body, spans, len(blob), [1, 2, 3, 50], "B") == {
        s: blob[s.start : s.end] for s in spans
    }


def _malformed_cases() -> list[tuple[str, bytes]]:
    blob = bytes(range(256)) * 4
    spans = [Span(0, 10), Span(100, 300)]
    good = build_multipart(blob, spans, "B")
    wrong_range = good.replace(b"bytes 100-299/1024", b"bytes 100-298/1024")
    unrequested = good.replace(b"bytes 0-9/1024", b"bytes 1-10/1024")
    wrong_total = good.replace(b"/1024", b"/2048")
    no_range = good.replace(b"Content-Range: bytes 0-9/1024\r\n", b"")
    duplicate = build_multipart(blob, [Span(0, 10), Span(0, 10)], "B")
    longer = good.replace(blob[100:300] + b"\r\n--B--", blob[100:300] + b"X\r\n--B--")
    bad_boundary = good.replace(b"--B", b"--C")
    wrong_length = good.replace(
        b"Content-Type: application/octet-stream\r\nContent-Range: bytes 0-9/1024",
        b"Content-Length: 11\r\nContent-Range: bytes 0-9/1024",
    )
    garbage_after = good.replace(b"--B\r\nContent-Type", b"--B junk\r\nContent-Type", 1)
    return [
        ("wrong range", wrong_range),
        ("unrequested", unrequested),
        ("wrong total", wrong_total),
        ("no Content-Range", no_range),
        ("duplicate part", duplicate),
        ("longer part", longer),
        ("other boundary", bad_boundary),
        ("wrong Content-Length", wrong_length),
        ("garbage after delimiter", garbage_after),
        ("truncated", good[:-30]),
        ("no closing delimiter", good[: good.rfind(b"--B--")]),
        ("not multipart at all", blob),
        ("a preamble", build_multipart(blob, spans, "B", preamble=b"preamble text")),
        ("first part swallowed as preamble", good[3:]),
    ]


@pytest.mark.parametrize(
    ("name", "body"), _malformed_cases(), ids=[n for n, _ in _malformed_cases()]
)
def test_multipart_malformed_rejected(name: str, body: bytes) -> None:
    spans = [Span(0, 10), Span(100, 300)]
    for step in (1, 7, len(body)):
        parser = MultipartByteRangesParser("B", spans, 1024)
        with pytest.raises(MultipartError):
            for i in range(0, len(body), step):
                parser.feed(body[i : i + step])
            parser.close()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_multipart_garbage_never_crashes(body: bytes, step: int) -> None:
    parser = MultipartByteRangesParser("B", [Span(0, 10)], 100)
    try:
        for i in range(0, len(body), step):
            for piece in parser.feed(body[i : i + step]):
                assert piece.span == Span(0, 10)
        parser.close()
    except MultipartError:
        pass
