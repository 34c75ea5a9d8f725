"""The dashboard's session and its defences, over plain HTTP (the browser tests are in
tests/browser): signing in, cookie flags, CSRF on every POST, the CSP, assets in the package."""

from __future__ import annotations

import re

import httpx

from tests.conftest import Server


def _signed_in(server: Server, key: str) -> httpx.Client:
    ui = httpx.Client(base_url=server.url, timeout=60)
    form = ui.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    resp = ui.post("/ui/login", data={"csrf": token.group(1), "key": key})
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/", resp.text
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert key not in cookie  # the key stays on the server
    return ui


def test_pages_need_a_session_and_carry_the_csp(server: Server) -> None:
    with httpx.Client(base_url=server.url) as anon:
        resp = anon.get("/ui/functions")
        assert resp.status_code == 303 and resp.headers["location"] == "/ui/login"
        login = anon.get("/ui/login")
        assert login.status_code == 200
        csp = login.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        for asset in ("htmx.min.js", "uPlot.iife.min.js", "app.js", "app.css", "LICENSES.txt"):
            assert anon.get(f"/ui/static/{asset}").status_code == 200, asset
        assert anon.get("/ui/static/..%2Fapp.py").status_code == 404
        assert anon.get("/ui/static/session.py").status_code == 404
        # the sign-in form's own token: a cross-site post without it is refused
        bad = anon.post("/ui/login", data={"csrf": "forged", "key": server.admin_key})
        assert bad.status_code == 403 and "faasbox_session" not in bad.headers.get(
            "set-cookie", "")


def test_a_wrong_key_does_not_sign_in(server: Server) -> None:
    with httpx.Client(base_url=server.url) as ui:
        token = re.search(r'name="csrf" value="([^"]+)"', ui.get("/ui/login").text)
        assert token is not None
        resp = ui.post("/ui/login", data={"csrf": token.group(1), "key": "fbx_nope_nope"})
        assert resp.status_code == 303 and "not+valid" in resp.headers["location"]
        assert ui.get("/ui/").status_code == 303


def test_every_post_needs_the_sessions_csrf_token(server: Server) -> None:
    server.deploy("ui-csrf", {"main.py": "def handler(event, context):\n    return 1\n"})
    ui = _signed_in(server, server.admin_key)
    try:
        page = ui.get("/ui/functions/ui-csrf")
        assert page.status_code == 200
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None
        for path, data in (("/ui/functions/ui-csrf/invoke", {"event": "{}"}),
                           ("/ui/admin/keys", {"scope": "admin"}),
                           ("/ui/tenant", {"tenant": "default"}),
                           ("/ui/logout", {})):
            assert ui.post(path, data=data).status_code == 403, path
            assert ui.post(path, data={**data, "csrf": "x" + token.group(1)}).status_code == 403
        ok = ui.post("/ui/functions/ui-csrf/invoke", data={"event": "{}",
                                                            "csrf": token.group(1)})
        assert ok.status_code == 200 and 'id="result-status">200<' in ok.text
        # signing out ends the session on the server
        assert ui.post("/ui/logout", data={"csrf": token.group(1)}).status_code == 303
        assert ui.get("/ui/").status_code == 303
    finally:
        ui.close()
