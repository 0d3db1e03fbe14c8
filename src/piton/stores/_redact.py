"""Passwords out of every message: store URLs, libpq connection strings, driver errors.

A password can reach text in three shapes: in a URL's user information
(``postgresql://u:pw@h/db``, ``redis://:pw@h``), as a ``key=value`` parameter (a URL's
query ``?password=pw``, or a libpq connection string ``host=h password='p w'``), or as
a fragment a driver quotes back in an error (libpq's ``missing "=" after "w"``).
``redact_url`` masks the first two shapes in any text, whatever the URL's scheme;
``scrub`` also masks the passwords a caller knows (``secrets_of(url)``) and quoted
fragments of them. Masking errs on the side of hiding too much.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

MASK = "***"

# scheme://user:password@ — the password runs to the last '@' before a quote or the end of
# the line (a password may hold '@', '/', '?' or even a space unencoded)
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"/?#@:]*:)(?P<secret>[^'\"\r\n]*)@"
)
# key=value, as in a query string or a libpq connection string; a value may be quoted
_PARAM = re.compile(
    r"(?P<key>(?<![A-Za-z0-9_%])(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})+)(?P<eq>\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s&;#'\"]*)"
)
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")


def is_secret_key(key: str) -> bool:
    """``password``, ``passwd``, ``pwd``, ``sslpassword``...: any case, percent-encoded or not."""
    name = unquote(key).strip().lower()
    return name.endswith("password") or name in ("passwd", "pwd")


def redact_url(text: str) -> str:
    """``text`` (a URL of any scheme, a libpq connection string, or a message holding
    them) with every password replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)

    def param(match: re.Match[str]) -> str:
        if not is_secret_key(match["key"]):
            return match[0]
        return f"{match['key']}{match['eq']}{MASK}"

    return _PARAM.sub(param, text)


def secrets_of(url: str) -> tuple[str, ...]:
    """The passwords ``url`` holds (as written and decoded), longest first, for ``scrub``."""
    found: set[str] = set()
    match = _USERINFO.search(url)
    if match:
        found.update((match["secret"], unquote(match["secret"])))
    try:
        parts = urlsplit(url)
        if parts.password:
            found.update((parts.password, unquote(parts.password)))
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        query = []
    found.update(unquote_plus(value) for key, value in query if is_secret_key(key))
    for param in _PARAM.finditer(url):
        if is_secret_key(param["key"]):
            value = param["value"]
            found.update((value, value.strip("'\""), unquote(value)))
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with passwords masked: those ``redact_url`` finds, each of ``secrets``, and
    any quoted fragment of one of them (a driver may quote part of a password back)."""
    for secret in secrets:
        text = text.replace(secret, MASK)

    def quoted(match: re.Match[str]) -> str:
        inner = match[1] if match[1] is not None else match[2]
        if inner and any(inner in secret for secret in secrets):
            return match[0].replace(inner, MASK)
        return match[0]

    if secrets:
        text = _QUOTED.sub(quoted, text)
    return redact_url(text)


__all__ = ["MASK", "is_secret_key", "redact_url", "scrub", "secrets_of"]
