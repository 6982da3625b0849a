"""A fleet must not stampede a registry: jittered starts, bounded concurrency per host,
and ``Retry-After`` (429/503) honoured, never sooner than asked and spread out.

Pure parts with a seeded random source (a fake clock: arrivals are counted per
simulated second); the client parts against a real aiohttp server on 127.0.0.1
that answers 429/503 with ``Retry-After`` and records when requests arrive and how
many are in flight.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from chunkah.registry.client import RegistryClient
from chunkah.registry.fetcher import RangeFetcher, RangeOptions
from chunkah.registry.reference import parse_registry_reference
from chunkah.registry.retry import RetryPolicy, start_delay

BLOB = os.urandom(256 << 10)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


# -- jittered start (pure, fake clock) ---------------------------------------------------


def test_start_delay_is_uniform_over_the_window() -> None:
    rng = random.Random(1)
    delays = [start_delay(60.0, rng) for _ in range(10_000)]
    assert all(0.0 <= d <= 60.0 for d in delays)
    assert min(delays) < 1.0 and max(delays) > 59.0
    assert abs(sum(delays) / len(delays) - 30.0) < 1.0
    assert start_delay(0.0, rng) == 0.0
    assert start_delay(-5.0, rng) == 0.0


def test_jitter_flattens_a_wave() -> None:
    """10 000 hosts triggered in the same second: without jitter the registry sees all
    of them in second 0; with a 300 s window no second sees more than ~2x the mean."""
    hosts, window = 10_000, 300.0
    rng = random.Random(7)
    per_second = collections.Counter(int(start_delay(window, rng)) for _ in range(hosts))
    mean = hosts / window
    assert max(per_second.values()) <= 2 * mean
    assert len(per_second) == int(window)  # every second of the window gets some
    burst = collections.Counter(int(start_delay(0.0, rng)) for _ in range(hosts))
    assert burst == {0: hosts}


# -- Retry-After: never sooner, spread (pure) --------------------------------------------


def test_retry_after_is_never_shortened_and_is_spread() -> None:
    policy = RetryPolicy(max_retry_after=30.0, retry_after_spread=0.25)
    rng = random.Random(3)
    waits = [policy.delay(1, retry_after=5.0, rng=rng) for _ in range(1000)]
    assert all(5.0 <= w <= 6.25 for w in waits)
    # 1000 hosts told "5 s" come back over more than a second, not in one instant.
    assert max(waits) - min(waits) > 1.0
    assert len({round(w, 3) for w in waits}) > 500
    # A huge Retry-After is capped (a host never hangs), and still spread.
    capped = [policy.delay(1, retry_after=3600.0, rng=rng) for _ in range(100)]
    assert all(30.0 <= w <= 37.5 for w in capped)
    assert policy.delay(1, retry_after=0.0, rng=rng) == 0.0
    exact = RetryPolicy(retry_after_spread=0.0)
    assert exact.delay(2, retry_after=2.0) == 2.0


def test_backoff_without_retry_after_grows_and_is_jittered() -> None:
    policy = RetryPolicy(base_delay=0.25, max_delay=8.0)
    rng = random.Random(5)
    for attempt in range(1, 8):
        cap = min(8.0, 0.25 * 2 ** (attempt - 1))
        waits = [policy.delay(attempt, rng=rng) for _ in range(200)]
        assert all(cap / 2 <= w <= cap for w in waits)
        assert max(waits) - min(waits) > cap / 4


# -- a real server that pushes back ------------------------------------------------------


@dataclass
class Pushback:
    """Answers the first ``refuse`` blob/manifest requests with ``status`` and
    ``Retry-After``; records arrival times and the peak of requests in flight."""

    refuse: int = 0
    status: int = 503
    retry_after: str = "1"
    hold: float = 0.0  # seconds each successful answer waits before its body
    arrivals: list[float] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(time.monotonic())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if len(self.arrivals) <= self.refuse:
                return web.Response(
                    status=self.status,
                    headers={"Retry-After": self.retry_after},
                    text='{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}',
                )
            if self.hold:
                await asyncio.sleep(self.hold)
            rng = request.headers.get("Range")
            if rng is None:
                return web.Response(body=BLOB, content_type="application/octet-stream")
            start, end = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            end = min(end, len(BLOB) - 1)
            return web.Response(
                status=206,
                body=BLOB[start : end + 1],
                headers={"Content-Range": f"bytes {start}-{end}/{len(BLOB)}"},
                content_type="application/octet-stream",
            )
        finally:
            self.in_flight -= 1


@asynccontextmanager
async def serving(pushback: Pushback) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", pushback.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        yield f"docker://127.0.0.1:{port}/fleet/app:v2"
    finally:
        await runner.cleanup()


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 60))


@pytest.mark.parametrize(("status", "how"), [(503, "range"), (429, "whole")])
def test_retry_after_is_honoured(status: int, how: str) -> None:
    """The host waits at least Retry-After (1 s), at most its spread, then succeeds."""

    async def go() -> None:
        pb = Pushback(refuse=1, status=status, retry_after="1")
        async with serving(pb) as ref_text, RegistryClient(plain_http=True, auth_files=False) as c:
            ref = parse_registry_reference(ref_text)
            if how == "range":
                async with RangeFetcher(c, ref, DIGEST, len(BLOB)) as f:
                    (got,) = await f.fetch_all([(1000, 5000)])
                assert got == BLOB[1000:6000]
            else:
                sink = bytearray()

                class Sink:
                    def write(self, data: bytes) -> int:
                        sink.extend(data)
                        return len(data)

                await c.download_blob(ref, DIGEST, Sink(), size=len(BLOB))
                assert bytes(sink) == BLOB
            assert c.stats.retries == 1
        assert len(pb.arrivals) == 2
        waited = pb.arrivals[1] - pb.arrivals[0]
        assert 1.0 <= waited <= 1.25 + 0.5, waited

    run(go)


def test_retry_after_as_http_date() -> None:
    async def go() -> None:
        when = email.utils.formatdate(time.time() + 2, usegmt=True)
        pb = Pushback(refuse=1, status=503, retry_after=when)
        async with serving(pb) as ref_text, RegistryClient(plain_http=True, auth_files=False) as c:
            ref = parse_registry_reference(ref_text)
            async with RangeFetcher(c, ref, DIGEST, len(BLOB)) as f:
                (got,) = await f.fetch_all([(0, 100)])
            assert got == BLOB[:100]
        waited = pb.arrivals[1] - pb.arrivals[0]
        # An HTTP date has 1 s resolution: "in 2 s" is 1 to 2 s from now, plus the spread.
        assert 0.9 <= waited <= 2.5 + 0.5, waited

    run(go)


def test_a_pushed_back_fleet_comes_back_spread_out() -> None:
    """40 hosts all told 'Retry-After: 1' do not return in the same instant."""

    async def go() -> None:
        hosts = 40
        pb = Pushback(refuse=hosts, status=503, retry_after="1")
        async with serving(pb) as ref_text:
            ref = parse_registry_reference(ref_text)

            async def host() -> None:
                async with RegistryClient(plain_http=True, auth_files=False) as c:
                    async with RangeFetcher(c, ref, DIGEST, len(BLOB)) as f:
                        (got,) = await f.fetch_all([(0, 1000)])
                    assert got == BLOB[:1000]

            await asyncio.gather(*(host() for _ in range(hosts)))
        first, retried = pb.arrivals[:hosts], pb.arrivals[hosts:]
        assert len(retried) == hosts
        assert min(retried) - max(first) >= 0.95  # nobody came back early
        assert max(retried) - min(retried) >= 0.05  # spread, not a second stampede

    run(go)


def test_concurrency_per_host_is_bounded() -> None:
    """One host fetching 64 scattered ranges one per request (a server without
    multi-range) keeps at most ``concurrency`` requests in flight; many blobs
    downloaded through one client never exceed its connection limit."""

    async def go() -> None:
        pb = Pushback(hold=0.02)
        async with serving(pb) as ref_text:
            ref = parse_registry_reference(ref_text)
            async with RegistryClient(plain_http=True, auth_files=False) as c:
                opts = RangeOptions(max_ranges=1, concurrency=4, merge_gap=0)
                ranges = [(i * 4000, 100) for i in range(64)]
                async with RangeFetcher(c, ref, DIGEST, len(BLOB), options=opts) as f:
                    got = await f.fetch_all(ranges)
                assert got == [BLOB[o : o + n] for o, n in ranges]
            assert pb.peak <= 4
            assert len(pb.arrivals) == 64
            pb.peak = 0
            async with RegistryClient(plain_http=True, auth_files=False, connection_limit=5) as c:

                class Discard:
                    def write(self, data: bytes) -> int:
                        return len(data)

                await asyncio.gather(
                    *(c.download_blob(ref, DIGEST, Discard(), size=len(BLOB)) for _ in range(30))
                )
            assert 1 < pb.peak <= 5

    run(go)


def test_update_jitter_waits_within_the_window_before_touching_the_sysroot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from chunkah import cli

    sysroot = tmp_path / "sys"
    slept: list[tuple[float, bool]] = []
    monkeypatch.setattr(cli.time, "sleep", lambda s: slept.append((s, sysroot.exists())))
    # Nothing listens on port 9: after the wait the update fails with a network error.
    rc = cli.main(
        ["update", "docker://127.0.0.1:9/x/y:z", "--sysroot", str(sysroot), "--plain-http",
         "--jitter", "30"]
    )  # fmt: skip
    assert rc != 0
    assert len(slept) == 1 and 0 <= slept[0][0] <= 30
    assert slept[0][1] is False  # the wait came before the sysroot was created
    assert "--jitter" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["-1", "soon", "1e9"])
def test_update_jitter_refuses_bad_windows(bad: str) -> None:
    from chunkah import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["update", "docker://h/r:t", "--sysroot", "/nonexistent", "--jitter", bad])
    assert exc.value.code == 2
