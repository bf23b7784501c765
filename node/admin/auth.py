"""The admin token: who may read the admin API and page.

A request presents the token as ``Authorization: Bearer <token>`` (scripts), or carries the
session cookie a browser got by sending the token once, through the login form or as
``?token=`` on a page's address (the node then sets the cookie and redirects to the address
without the token, so it stays out of the browser history). The cookie holds a keyed digest of
the token, not the token. Every comparison takes constant time.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

COOKIE = "cxrnode_admin"
MIN_TOKEN_LENGTH = 16


class TokenCheck:
    """Checks requests against the configured token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode("utf-8")
        self.cookie_value = hmac.new(
            self._token, b"cxrnode admin session", hashlib.sha256
        ).hexdigest()

    def matches(self, presented: str | None) -> bool:
        """Whether ``presented`` is the token, in constant time: digests of equal length are
        compared, so not even the token's length leaks."""
        if not presented:
            return False
        given = hashlib.sha256(presented.encode("utf-8")).digest()
        return hmac.compare_digest(given, hashlib.sha256(self._token).digest())

    def allows(self, request: Request) -> bool:
        """Whether the request carries the token (bearer header) or the session cookie."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.matches(credentials.strip()):
            return True
        cookie = request.cookies.get(COOKIE)
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.cookie_value.encode())
