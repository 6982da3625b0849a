"""Registry authentication, the pure parts: challenges, scopes, stored credentials, tokens.

The HTTP exchange (asking a token server) lives in :mod:`.client`; this module parses
``WWW-Authenticate``, finds credentials in the files podman/skopeo and docker write,
and caches tokens by (realm, service, scope) with their expiry.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chunkah.errors import InputError

from .reference import DOCKER_HUB

__all__ = [
    "Challenge",
    "Credentials",
    "TokenCache",
    "auth_file_paths",
    "basic_authorization",
    "load_credentials",
    "parse_challenges",
    "repository_scope",
]


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header; ``scheme`` is lowercase."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str | None = None

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


_TCHAR = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68 = _TCHAR | set("/=")


def _token(s: str, i: int, chars: set[str] = _TCHAR) -> tuple[str, int]:
    j = i
    while j < len(s) and s[j] in chars:
        j += 1
    return s[i:j], j


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t":
        i += 1
    return i


def _quoted(s: str, i: int) -> tuple[str, int]:
    # s[i] == '"'
    out = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise ValueError("unterminated quoted string")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (RFC 9110 §11.6.1), possibly several challenges.

    ``Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull"``
    gives one ``Challenge("bearer", {...})``.  Parameter names are lowercased.
    Malformed input raises ``ValueError``.
    """
    out: list[Challenge] = []
    i, n = 0, len(header)
    while i < n:
        i = _skip_ws(header, i)
        if i < n and header[i] == ",":
            i += 1
            continue
        if i >= n:
            break
        scheme, i = _token(header, i)
        if not scheme:
            raise ValueError(f"malformed WWW-Authenticate {header!r}")
        params: dict[str, str] = {}
        token68: str | None = None
        i = _skip_ws(header, i)
        # Either a token68 ("Basic abc==") or auth-params ("realm=...") follow.
        t68, j = _token(header, i, _TOKEN68)
        k = _skip_ws(header, j)
        name, a = _token(header, i)
        a = _skip_ws(header, a)
        v = _skip_ws(header, a + 1)
        is_param = (
            bool(name)
            and a < n
            and header[a] == "="
            and v < n
            and (header[v] == '"' or header[v] in _TCHAR)
        )
        if not is_param and t68 and (k >= n or header[k] == ","):
            token68, i = t68, k
        while token68 is None and i < n:
            i = _skip_ws(header, i)
            name, j = _token(header, i)
            j = _skip_ws(header, j)
            if not name or j >= n or header[j] != "=":
                break  # the next challenge starts here (or nothing follows)
            j = _skip_ws(header, j + 1)
            if j < n and header[j] == '"':
                value, j = _quoted(header, j)
            else:
                value, j = _token(header, j)
            params[name.lower()] = value
            j = _skip_ws(header, j)
            if j < n and header[j] != ",":
                raise ValueError(f"malformed WWW-Authenticate {header!r}")
            i = j + 1 if j < n else j
            # A comma followed by "token =" continues this challenge; "token token"
            # or "token," starts another.
            k = _skip_ws(header, i)
            nxt, m = _token(header, k)
            m = _skip_ws(header, m)
            if not (nxt and m < n and header[m] == "="):
                i = k
                break
        out.append(Challenge(scheme.lower(), params, token68))
    return out


def repository_scope(repository: str, actions: Sequence[str] = ("pull",)) -> str:
    """``repository:NAME:pull[,push]`` as the token spec writes it."""
    return f"repository:{repository}:{','.join(actions)}"


@dataclass(frozen=True)
class Credentials:
    """What a user stored for a registry.  ``identity_token`` is an OAuth2 refresh
    token (docker login with an identity provider); ``registry_token`` is sent as a
    Bearer token as it is."""

    username: str | None = None
    password: str | None = None
    identity_token: str | None = None
    registry_token: str | None = None

    def __repr__(self) -> str:  # never print secrets
        return f"Credentials(username={self.username!r}, ...)"


def basic_authorization(creds: Credentials) -> str | None:
    """The ``Authorization`` value for Basic auth, when there is a user and password."""
    if creds.username is None or creds.password is None:
        return None
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def auth_file_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where credentials are looked for, in order (as containers/image does, then docker)."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    paths = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    paths.append(home / ".config" / "containers" / "auth.json")
    docker_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
    paths.append(docker_dir / "config.json")
    return paths


_HUB_KEYS = {"docker.io", "index.docker.io", "registry-1.docker.io"}


def _normalize_key(key: str) -> str:
    key = key.removeprefix("https://").removeprefix("http://")
    for suffix in ("/v1/", "/v1", "/v2/", "/v2"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
            break
    host, slash, path = key.partition("/")
    host = host.lower()
    if host in _HUB_KEYS:
        host = DOCKER_HUB
    return host + slash + path


def _entry_credentials(entry: object, where: Path) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    identity = entry.get("identitytoken") or None
    registry_token = entry.get("registrytoken") or None
    user = entry.get("username")
    password = entry.get("password")
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, _, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise InputError(f"{where}: an 'auth' entry is not base64 of user:pass") from None
    if not any((user, identity, registry_token)):
        return None
    return Credentials(
        username=user if isinstance(user, str) else None,
        password=password if isinstance(password, str) else None,
        identity_token=identity if isinstance(identity, str) else None,
        registry_token=registry_token if isinstance(registry_token, str) else None,
    )


def load_credentials(
    registry: str,
    repository: str | None = None,
    *,
    paths: Sequence[Path] | None = None,
    env: Mapping[str, str] | None = None,
) -> Credentials | None:
    """Credentials for ``registry`` (and ``repository``) from the first file that has some.

    Keys may name a host, or a host and a namespace (``quay.io/team``); the longest
    match wins, as in containers-auth.json(5).  Credential helpers (``credsStore``,
    ``credHelpers``) are not run.  Unreadable files are skipped, not fatal.
    """
    want = _normalize_key(registry)
    candidates = [want]
    if repository:
        parts = repository.split("/")
        candidates = [f"{want}/{'/'.join(parts[:k])}" for k in range(len(parts), 0, -1)] + [want]
    for path in paths if paths is not None else auth_file_paths(env):
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        auths = doc.get("auths") if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            continue
        table = {_normalize_key(k): v for k, v in auths.items() if isinstance(k, str)}
        for key in candidates:
            if key in table and (creds := _entry_credentials(table[key], path)) is not None:
                return creds
    return None


class TokenCache:
    """Bearer tokens by (realm, service, scope), dropped a little before they expire."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}

    def _now(self) -> float:
        return self._clock()

    def get(self, realm: str, service: str, scope: str) -> str | None:
        hit = self._tokens.get((realm, service, scope))
        if hit is None:
            return None
        token, expires = hit
        if self._now() >= expires:
            del self._tokens[(realm, service, scope)]
            return None
        return token

    def put(self, realm: str, service: str, scope: str, token: str, expires_in: float) -> None:
        # Spec default lifetime is 60 s; refresh 10 % (at least 5 s) early.
        lifetime = max(expires_in, 0.0)
        self._tokens[(realm, service, scope)] = (
            token,
            self._now() + lifetime - max(5.0, lifetime * 0.1),
        )

    def drop(self, realm: str, service: str, scope: str) -> None:
        self._tokens.pop((realm, service, scope), None)
