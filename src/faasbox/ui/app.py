"""The dashboard at ``/ui``: server-rendered pages (Jinja2) with small live parts (htmx) and
charts (uPlot), every asset in the package.

The pages read and change everything through the server's own API, in process, with the
session's API key: what a page shows is what that key may see through the API (a tenant sees
only its own; an admin may switch tenant), and nothing here decides access on its own.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

import httpx
import orjson
from fastapi import APIRouter, FastAPI, Request
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from faasbox.platform import Platform
from faasbox.ui.session import COOKIE, LOGIN_COOKIE, Session, Sessions, load_secret, same

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
       " connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none';"
       " form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store"}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}
PAGES = [("overview", "/ui/", "Overview"), ("functions", "/ui/functions", "Functions"),
         ("tasks", "/ui/tasks", "Tasks"), ("jobs", "/ui/jobs", "Jobs"),
         ("triggers", "/ui/triggers", "Triggers"), ("cost", "/ui/cost", "Cost & waste"),
         ("admin", "/ui/admin", "Admin")]

env = Environment(loader=PackageLoader("faasbox.ui", "templates"),
                  autoescape=select_autoescape(["html"]))
env.filters["ts"] = lambda t: "-" if t is None else time.strftime(
    "%Y-%m-%d %H:%M:%S", time.localtime(t))
env.filters["money"] = lambda v: f"${v:,.2f}" if v >= 100 else (
    f"${v:.6f}".rstrip("0").rstrip(".") if v else "$0")
env.filters["json"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()
env.filters["q"] = lambda v: quote(str(v), safe="")

router = APIRouter(include_in_schema=False)


class NotSignedIn(Exception):
    pass


class Api:
    """The server's own API, called in process with a session's key."""

    def __init__(self, request: Request, session: Session) -> None:
        self.session = session
        params = {"tenant": session.tenant} if session.tenant else {}
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=request.app), base_url="http://127.0.0.1",
            headers={"Authorization": f"Bearer {session.key}"}, params=params, timeout=120)

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        resp = await self.http.request(method, path, **kwargs)
        if resp.status_code == 401:
            raise NotSignedIn
        return resp

    async def get(self, path: str, **params: Any) -> Any:
        resp = await self.call("GET", path, params={k: v for k, v in params.items()
                                                     if v is not None})
        return resp.json() if resp.status_code == 200 else None

    async def close(self) -> None:
        await self.http.aclose()


def _platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


def _sessions(request: Request) -> Sessions:
    s: Sessions = request.app.state.ui_sessions
    return s


def page(template: str, status: int = 200, /, **context: Any) -> HTMLResponse:
    html = env.get_template(template).render(pages=PAGES, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _session(request: Request) -> Session | None:
    return _sessions(request).get(request.cookies.get(COOKIE))


def _to_login() -> Response:
    return RedirectResponse("/ui/login", status_code=303, headers=HEADERS)


async def _context(request: Request, session: Session, api: Api, current: str) -> dict[str, Any]:
    who = await api.get("/v1/whoami")
    if who is None:
        raise NotSignedIn
    tenants = None
    if who["scope"] == "admin":
        listed = await api.get("/v1/tenants")
        tenants = [t["name"] for t in (listed or {}).get("tenants", [])]
    return {"who": who, "tenant": session.tenant or who["tenant"], "tenants": tenants,
            "csrf": session.csrf, "current": current}


async def _render(request: Request, current: str, template: str,
                  load: Any) -> Response:
    """A page: signed in, its data loaded by ``load(api)``, rendered with the common parts."""
    session = _session(request)
    if session is None:
        return _to_login()
    api = Api(request, session)
    try:
        context = await _context(request, session, api, current)
        context.update(await load(api, context))
    except NotSignedIn:
        _sessions(request).drop(session)
        return _to_login()
    finally:
        await api.close()
    return page(template, **context)


async def _checked(request: Request) -> tuple[Session, dict[str, str]] | Response:
    """A POST of a signed-in session with its CSRF token, or the answer that refuses it."""
    session = _session(request)
    if session is None:
        return _to_login()
    form = await _form(request)
    if not same(form.get("csrf"), session.csrf):
        return page("error.html", 403, message="the form's CSRF token is missing or wrong;"
                    " reload the page and try again")
    return session, form


# -- signing in ------------------------------------------------------------------------------
@router.get("/ui/login")
async def login_form(request: Request) -> Response:
    token = _sessions(request).sign(str(time.time_ns()))
    resp = page("login.html", token=token, message=request.query_params.get("m"))
    resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/ui",
                    secure=request.url.scheme == "https")
    return resp


@router.post("/ui/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    token = request.cookies.get(LOGIN_COOKIE)
    if not same(form.get("csrf"), token) or _sessions(request).unsign(token) is None:
        return page("error.html", 403, message="the sign-in form expired; reload it")
    key = form.get("key", "").strip()
    if _platform(request).tenancy.authenticate(key) is None:
        return RedirectResponse("/ui/login?m=that+key+is+not+valid", status_code=303,
                                headers=HEADERS)
    _, cookie = _sessions(request).create(key)
    resp = RedirectResponse("/ui/", status_code=303, headers=HEADERS)
    resp.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", path="/ui",
                    secure=request.url.scheme == "https")
    resp.delete_cookie(LOGIN_COOKIE, path="/ui")
    return resp


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    checked = await _checked(request)
    if isinstance(checked, Response):
        return checked
    _sessions(request).drop(checked[0])
    resp = _to_login()
    resp.delete_cookie(COOKIE, path="/ui")
    return resp


@router.post("/ui/tenant")
async def switch_tenant(request: Request) -> Response:
    """An admin acts on another tenant (the API refuses it for anyone else)."""
    checked = await _checked(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    wanted = form.get("tenant") or None
    principal = _platform(request).tenancy.authenticate(session.key)
    if principal is None:
        return _to_login()
    if principal.scope == "admin":
        session.tenant = None if wanted == principal.tenant else wanted
        _sessions(request).save(session)
    return RedirectResponse(form.get("next") or "/ui/", status_code=303, headers=HEADERS)


# -- pages -------------------------------------------------------------------------------------
@router.get("/ui")
async def ui_root() -> Response:
    return RedirectResponse("/ui/", status_code=307, headers=HEADERS)


@router.get("/ui/")
async def overview(request: Request) -> Response:
    async def load(api: Api, ctx: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        usage = await api.get("/v1/usage", **{"from": now - 24 * 3600, "step": "hour"})
        status = await api.get("/v1/status") or {"functions": []}
        cost = await api.get("/v1/cost")
        buckets = (usage or {}).get("buckets", [])
        states: dict[str, int] = {}
        for fn in status["functions"]:
            for state, n in fn["instances"].items():
                if state != "total":
                    states[state] = states.get(state, 0) + n
        chart = {
            "from": (now - 24 * 3600) // 3600 * 3600, "to": now,
            "t": [b["start"] for b in buckets],
            "invocations": [b["invocations"] for b in buckets],
            "errors": [b["errors"] for b in buckets],
            "throttles": [b["throttles"] for b in buckets],
            "cold_starts": [b["cold_starts"] for b in buckets],
            "p50": [b["duration_ms_p50"] for b in buckets],
            "p99": [b["duration_ms_p99"] for b in buckets],
        }
        return {"usage": usage, "chart": chart, "states": states, "cost": cost,
                "queue_depth": sum(f["queue_depth"] for f in status["functions"]),
                "functions": status["functions"]}

    return await _render(request, "overview", "overview.html", load)


@router.get("/ui/functions")
async def functions(request: Request) -> Response:
    async def load(api: Api, ctx: dict[str, Any]) -> dict[str, Any]:
        listed = await api.get("/v1/functions") or {"functions": []}
        return {"functions": listed["functions"]}

    return await _render(request, "functions", "functions.html", load)


@router.get("/ui/functions/{name}")
async def function(name: str, request: Request) -> Response:
    async def load(api: Api, ctx: dict[str, Any]) -> dict[str, Any]:
        fn = await api.get(f"/v1/functions/{quote(name, safe='')}")
        if fn is None:
            return {"missing": name}
        versions = await api.get(f"/v1/functions/{quote(name, safe='')}/versions")
        inst = await api.get(f"/v1/functions/{quote(name, safe='')}/instances")
        calls = await api.get("/v1/invocations", function=name, limit=20)
        return {"fn": fn, "name": name, "versions": (versions or {}).get("versions", []),
                "instances": (inst or {}).get("instances", []),
                "invocations": (calls or {}).get("invocations", [])}

    return await _render(request, "functions", "function.html", load)


@router.get("/ui/functions/{name}/instances")
async def function_instances(name: str, request: Request) -> Response:
    """The live part of a function's page: its instances now."""
    session = _session(request)
    if session is None:
        return _to_login()
    api = Api(request, session)
    try:
        inst = await api.get(f"/v1/functions/{quote(name, safe='')}/instances")
    except NotSignedIn:
        return _to_login()
    finally:
        await api.close()
    return page("_instances.html", instances=(inst or {}).get("instances", []), name=name)


@router.post("/ui/functions/{name}/invoke")
async def invoke(name: str, request: Request) -> Response:
    checked = await _checked(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    api = Api(request, session)
    try:
        began = time.perf_counter()
        resp = await api.call("POST", f"/v1/functions/{quote(name, safe='')}/invoke",
                              content=(form.get("event") or "null").encode(),
                              headers={"Content-Type": "application/json"})
        wall_ms = (time.perf_counter() - began) * 1000
        rid = resp.headers.get("x-faasbox-request-id")
        record = await api.get(f"/v1/invocations/{rid}") if rid else None
    except NotSignedIn:
        return _to_login()
    finally:
        await api.close()
    try:
        shown = orjson.dumps(resp.json(), option=orjson.OPT_INDENT_2).decode()
    except ValueError:
        shown = resp.text
    return page("_result.html", 200, status=resp.status_code, body=shown, record=record,
                wall_ms=wall_ms)


@router.get("/ui/tasks")
async def tasks(request: Request) -> Response:
    async def load(api: Api, ctx: dict[str, Any]) -> dict[str, Any]:
        recent = await api.get("/v1/tasks", limit=50) or {"tasks": []}
        dead = await api.get("/v1/tasks", status="dead", limit=50) or {"tasks": []}
        status = await api.get("/v1/status") or {"functions": []}
        counts: dict[str, int] = {}
        for t in recent["tasks"]:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        queues = [{"name": f["name"], "depth": f["queue_depth"], "waiting": f["waiting"],
                   "in_flight": f["in_flight"]} for f in status["functions"]]
        return {"tasks": recent["tasks"], "dead": dead["tasks"], "counts": counts,
                "queues": queues}

    return await _render(request, "tasks", "tasks.html", load)


@router.get("/ui/jobs")
async def jobs(request: Request) -> Response:
    async def load(api: Api, ctx: dict[str, Any]) -> dict[str, Any]:
        listed = await api.get("/v1/jobs", limit=50) or {"jobs": []}
        for job in listed["jobs"]:
            p = job["progress"]
            job["done"] = sum(p[s] for s in ("succeeded", "failed", "dead", "expired",
                                             "cancelled"))
        return {"jobs": listed["jobs"]}

    return await _render(request, "jobs", "jobs.html", load)


@router.get("/ui/triggers")
async def triggers(request: Request) -> Response:
    async def load(api: Api, ctx: dict[str, Any]) -> dict[str, Any]:
        listed = await api.get("/v1/triggers") or {"triggers": []}
        return {"triggers": listed["triggers"]}

    return await _render(request, "triggers", "triggers.html", load)


@router.get("/ui/cost")
async def cost(request: Request) -> Response:
    async def load(api: Api, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"cost": await api.get("/v1/cost"), "waste": await api.get("/v1/waste")}

    return await _render(request, "cost", "cost.html", load)


@router.get("/ui/admin")
async def admin(request: Request) -> Response:
    async def load(api: Api, ctx: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"audit": (await api.get("/v1/audit", limit=50) or {}).get(
            "audit", []), "new_key": None}
        if ctx["who"]["scope"] == "admin":
            t = ctx["tenant"]
            out["tenant_info"] = await api.get(f"/v1/tenants/{quote(t, safe='')}")
            out["keys"] = (await api.get(f"/v1/tenants/{quote(t, safe='')}/keys")
                           or {}).get("keys", [])
            every = await api.get("/v1/tenants") or {"tenants": []}
            out["all_tenants"] = every["tenants"]
        return out

    return await _render(request, "admin", "admin.html", load)


@router.post("/ui/admin/keys")
async def create_key(request: Request) -> Response:
    checked = await _checked(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    principal = _platform(request).tenancy.authenticate(session.key)
    tenant = session.tenant or (principal.tenant if principal else "")
    api = Api(request, session)
    try:
        resp = await api.call("POST", f"/v1/tenants/{quote(tenant, safe='')}/keys",
                              json={"scope": form.get("scope", "invoke"),
                                    "description": form.get("description", "")})
    except NotSignedIn:
        return _to_login()
    finally:
        await api.close()
    if resp.status_code != 201:
        return page("error.html", resp.status_code, message=resp.text)
    return page("_newkey.html", key=resp.json())


@router.post("/ui/admin/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request) -> Response:
    checked = await _checked(request)
    if isinstance(checked, Response):
        return checked
    session, _ = checked
    principal = _platform(request).tenancy.authenticate(session.key)
    tenant = session.tenant or (principal.tenant if principal else "")
    api = Api(request, session)
    try:
        resp = await api.call("DELETE", f"/v1/tenants/{quote(tenant, safe='')}/keys/"
                              f"{quote(key_id, safe='')}")
    except NotSignedIn:
        return _to_login()
    finally:
        await api.close()
    if resp.status_code != 204:
        return page("error.html", resp.status_code, message=resp.text)
    return RedirectResponse("/ui/admin", status_code=303, headers=HEADERS)


@router.get("/ui/static/{name}")
async def static(name: str) -> Response:
    folder = resources.files("faasbox.ui").joinpath("static")
    kind = STATIC_TYPES.get(name[name.rfind("."):]) if "." in name else None
    entry = folder.joinpath(name)
    if kind is None or "/" in name or name.startswith(".") or not entry.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(entry.read_bytes(), media_type=kind,
                    headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options":
                             "nosniff"})


def install(app: FastAPI, platform: Platform) -> None:
    # in the data dir the workers of --workers share (platform.home): one secret, one set
    home = platform.home
    app.state.ui_sessions = Sessions(load_secret(home), home / "ui-sessions")
    app.include_router(router)
