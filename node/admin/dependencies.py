"""What the admin routes share, as FastAPI dependencies: the node's context, the token check
(bearer for the API, the session cookie for the pages), a read-only database session and the
record of each access.

A route declares what it needs in its signature (``admin: Admin``, ``session: ReadSession``,
``access: Access``) and the routers add the token check in front of every route they serve,
so no route can forget it, and the check runs before the route's parameters are even read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment
from sqlalchemy.orm import Session

from node.admin.auth import COOKIE, TokenCheck
from node.admin.probe import DestinationProbe
from node.config import Settings
from node.predict import Prediction, ServingModel, SimilarCase
from node.refusals import RefusalAudit
from storage import audit
from storage.actions import Action
from storage.database import Database

log = logging.getLogger(__name__)

SESSION_HOURS = 12


@dataclass(frozen=True)
class AdminContext:
    """Everything the routes use of the node, built once by ``create_app``.

    Attributes
    ----------
    db:
        The node's database (only read, except for the audit events of admin access).
    settings:
        The node's settings: its identity for the pages and the health check.
    tokens:
        The admin token's check.
    refusals:
        Counts refused requests into one audit event per client address and window.
    pages:
        The Jinja environment of the HTML templates.
    probe:
        Destination reachability for ``/api/health``; None leaves the destinations out.
    model:
        The model uploads are tried on (``/api/predict``, ``/try``): the node's, or the
        settings' model loaded on first use.
    similar_cases:
        Finds the earlier cases nearest a prediction, for the ``/try`` page; None shows none.
    """

    db: Database
    settings: Settings
    tokens: TokenCheck
    refusals: RefusalAudit
    pages: Environment
    model: ServingModel
    probe: DestinationProbe | None = None
    similar_cases: Callable[[Prediction], Sequence[SimilarCase]] | None = None

    def refuse(self, request: Request) -> None:
        """Count a request without a valid token: one event per client address and window,
        with the count, so a flood of bad tokens does not become a flood of audit
        transactions."""
        detail = {"path": request.url.path, "via": "http"}
        if self.refusals.record(Action.ADMIN_AUTH_FAILED, client(request), detail):
            log.warning("admin request without a valid token refused")

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        """A template rendered with the node's AE title, as an HTML answer."""
        html = self.pages.get_template(name).render(ae_title=self.settings.ae_title, **context)
        return HTMLResponse(html, status_code=status)

    def with_session(self, response: Response) -> Response:
        """``response`` with the session cookie set: a keyed digest of the token, for the
        pages' paths only through this server (HttpOnly, SameSite strict, Secure over TLS)."""
        response.set_cookie(
            COOKIE,
            self.tokens.cookie_value,
            max_age=SESSION_HOURS * 3600,
            httponly=True,
            samesite="strict",
            secure=bool(self.settings.tls_cert),
            path="/",
        )
        return response


def admin_context(request: Request) -> AdminContext:
    return request.app.state.admin


Admin = Annotated[AdminContext, Depends(admin_context)]


def client(request: Request) -> str | None:
    """The client's address, as the audit records it."""
    return request.client.host if request.client else None


def actor(request: Request) -> dict[str, str | None]:
    """Who made a request with the token, as the audit's actor columns record them."""
    return {"actor_ip": client(request), "actor_user": "admin-token"}


# The token -----------------------------------------------------------------------------------


def require_token(request: Request, admin: Admin) -> None:
    """Let through a request with the bearer token or the session cookie; refuse (401, and
    count it) any other."""
    if not admin.tokens.allows(request):
        admin.refuse(request)
        raise HTTPException(
            401, "a valid admin token is required", headers={"WWW-Authenticate": "Bearer"}
        )


class AnswerInstead(Exception):  # noqa: N818 - not an error: a page answered in place of another
    """Raised by :func:`require_browser_session` with the answer a browser gets instead of the
    page it asked for (the login form, or the redirect that sets the cookie)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def answer_instead(request: Request, exc: AnswerInstead) -> Response:
    """The exception handler that sends :class:`AnswerInstead`'s answer."""
    return exc.response


def require_browser_session(request: Request, admin: Admin) -> None:
    """Let through a browser with the session cookie (or a script with the bearer token);
    answer any other with the login page, or trade a ``?token=`` for the cookie with a
    redirect to the same address without the token (so it stays out of the history)."""
    presented = request.query_params.get("token")
    if presented is not None:
        if not admin.tokens.matches(presented):
            admin.refuse(request)
            raise AnswerInstead(login_page(admin, request.url.path, failed=True))
        kept = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = request.url.path + (f"?{urlencode(kept)}" if kept else "")
        raise AnswerInstead(admin.with_session(RedirectResponse(target, status_code=303)))
    if admin.tokens.allows(request):
        return
    stale = bool(request.cookies.get(COOKIE))  # a cookie, but not ours (or of an old token)
    if stale:
        admin.refuse(request)
    raise AnswerInstead(login_page(admin, request.url.path, failed=stale))


def login_page(admin: AdminContext, next_path: str, failed: bool) -> HTMLResponse:
    """The token form (401), returning to ``next_path`` once the token is given."""
    return admin.page("login.html", 401, failed=failed, next=next_path)


# The database -------------------------------------------------------------------------------


def read_session(admin: Admin) -> Iterator[Session]:
    """A read-only session for the route, closed when the route returns (before the answer is
    sent)."""
    with admin.db.reading() as session:
        yield session


ReadSession = Annotated[Session, Depends(read_session, scope="function")]


@dataclass(frozen=True)
class AccessLog:
    """Records what a request read, with the client's address (``admin.query``)."""

    admin: AdminContext
    request: Request

    def record(self, what: str, filters: dict[str, Any], rows: int) -> None:
        """Commit the access's audit event; a route calls it before it returns the data, so no
        patient data leaves without its event committed."""
        with self.admin.db.transaction() as session:
            audit.record(
                session,
                Action.ADMIN_QUERY,
                **actor(self.request),
                detail={"what": what, "filters": filters, "rows": rows, "via": "http"},
            )


def access_log(request: Request, admin: Admin) -> AccessLog:
    return AccessLog(admin, request)


Access = Annotated[AccessLog, Depends(access_log)]
