"""The browser's way in: the token form (``GET|POST /login``) that sets the session cookie, and
``GET /logout`` that drops it. Open without the token, of course."""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from node.admin.auth import COOKIE
from node.admin.dependencies import Admin

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_form(admin: Admin):
    return admin.page("login.html", 200, failed=False, next="/")


@router.post("/login")
async def login(request: Request, admin: Admin):
    # A urlencoded form, parsed here rather than with python-multipart.
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    presented = (form.get("token") or [""])[0]
    target = (form.get("next") or ["/"])[0]
    if not target.startswith("/") or target.startswith("//"):
        target = "/"  # only pages of this server
    if not admin.tokens.matches(presented):
        await run_in_threadpool(admin.refuse, request)  # it writes to the database
        return admin.page("login.html", 401, failed=True, next=target)
    return admin.with_session(RedirectResponse(target, status_code=303))


@router.get("/logout")
def logout():
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
