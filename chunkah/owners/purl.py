"""Package URLs (https://github.com/package-url/purl-spec) for components."""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["make_purl"]


def _enc(s: str) -> str:
    return quote(s, safe=".-_~")


def make_purl(
    type_: str,
    name: str,
    version: str = "",
    *,
    namespace: str = "",
    qualifiers: dict[str, str] | None = None,
) -> str:
    """``pkg:TYPE/NAMESPACE/NAME@VERSION?k=v`` with every part percent-encoded.

    Qualifiers are sorted by key and empty values dropped, as the spec's
    canonical form asks.
    """
    out = f"pkg:{type_}/"
    if namespace:
        out += "/".join(_enc(p) for p in namespace.split("/")) + "/"
    out += _enc(name)
    if version:
        out += "@" + _enc(version)
    items = sorted((k, v) for k, v in (qualifiers or {}).items() if v)
    if items:
        out += "?" + "&".join(f"{k}={_enc(v)}" for k, v in items)
    return out
