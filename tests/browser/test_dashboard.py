"""The dashboard in a real browser: Debian's chromium driven by Playwright (never a browser
of Playwright's own). Sign in with a key, see the functions, invoke from the form and see the
result, watch an instance appear, see a chart drawn with data; a second tenant does not see the
first's functions; an admin switches tenant and makes a key.

On failure a screenshot of the page is saved under ``ui-failures/`` (or
``$FAASBOX_UI_FAILURES``). With ``FAASBOX_UI_SHOTS=docs/ui`` every page is saved there (the
screenshots of docs/ui.md).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import Server
from tests.tenants import deploy, make_key, make_tenant

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
HELLO = {"main.py": """
    def handler(event, context):
        print("hello from the handler")
        return {"greeting": "hello " + str(event.get("name", "world"))}
"""}

pytestmark = [pytest.mark.xdist_group("browser"),
              pytest.mark.skipif(shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
                                 reason="no chromium (make installs it: scripts/browser-setup)")]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    yield pg
    failed = getattr(request.node, "ui_failed", False)  # set by conftest.py
    if failed:
        folder = Path(os.environ.get("FAASBOX_UI_FAILURES", "ui-failures"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{request.node.name}.png"
        pg.screenshot(path=str(path), full_page=True)
        print(f"screenshot of the failure: {path}")
    context.close()


def shot(pg: Page, name: str) -> None:
    """Save the page for the docs when asked to."""
    folder = os.environ.get("FAASBOX_UI_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def sign_in(pg: Page, server: Server, key: str) -> None:
    pg.goto(f"{server.url}/ui/")
    assert pg.url.endswith("/ui/login")
    pg.fill("#key", key)
    pg.click("#sign-in")
    pg.wait_for_url(re.compile(r".*/ui/$"))


@pytest.fixture(scope="module")
def keys(server: Server) -> dict[str, str]:
    make_tenant(server, "ui-a")
    make_tenant(server, "ui-b")
    a, b = make_key(server, "ui-a", "developer"), make_key(server, "ui-b", "developer")
    with server.client(a) as client:
        deploy(server, client, "hello-ui", HELLO, memory_mb=128)
    with server.client(b) as client:
        deploy(server, client, "secret-of-b", HELLO, memory_mb=128)
    return {"a": a, "b": b}


def test_sign_in_invoke_watch_an_instance_and_see_a_chart(
        server: Server, keys: dict[str, str], page: Page) -> None:
    pg = page
    pg.goto(f"{server.url}/ui/login")
    shot(pg, "login")
    sign_in(pg, server, keys["a"])
    pg.click("#nav-functions")
    names = pg.locator("a.fn-link").all_inner_texts()
    assert names == ["hello-ui"]
    shot(pg, "functions")
    pg.click("text=hello-ui")
    pg.wait_for_selector("#invoke-form")
    assert "no instances" in pg.inner_text("#instances")
    pg.fill("#event", '{"name": "ada"}')
    pg.click("#invoke")
    pg.wait_for_selector("#invoke-result")
    assert pg.inner_text("#result-status") == "200"
    assert '"greeting": "hello ada"' in pg.inner_text("#result-body")
    assert "ms" in pg.inner_text("#result-duration")
    # the instance the call started appears in the live part (htmx, every second)
    pg.wait_for_selector("#instances tr.instance", timeout=15000)
    shot(pg, "function")
    # the overview draws its charts with the call in them
    pg.click("#nav-overview")
    pg.wait_for_selector("figure#chart-calls.drawn canvas")
    points = pg.get_attribute("figure#chart-calls", "data-points")
    assert points is not None and int(points) >= 1
    assert int(pg.inner_text("#stat-invocations")) >= 1
    shot(pg, "overview")
    for nav, heading in (("tasks", "Tasks and queues"), ("jobs", "Jobs"),
                         ("triggers", "Triggers"), ("cost", "Cost and waste"),
                         ("admin", "Admin")):
        pg.click(f"#nav-{nav}")
        assert pg.inner_text("h1").startswith(heading)
        shot(pg, nav)
    pg.click("#nav-cost")
    assert "hello-ui" in pg.inner_text("#cost")


def test_a_second_tenant_does_not_see_the_firsts_functions(
        server: Server, keys: dict[str, str], page: Page) -> None:
    pg = page
    sign_in(pg, server, keys["b"])
    pg.click("#nav-functions")
    names = pg.locator("a.fn-link").all_inner_texts()
    assert names == ["secret-of-b"]
    pg.goto(f"{server.url}/ui/functions/hello-ui")
    assert "No function hello-ui" in pg.inner_text("h1")
    for path in ("/ui/", "/ui/cost", "/ui/tasks", "/ui/admin"):
        pg.goto(f"{server.url}{path}")
        assert "hello-ui" not in pg.content()
    assert pg.locator("#tenant-switch").count() == 0


def test_an_admin_switches_tenant_and_makes_a_key(
        server: Server, keys: dict[str, str], page: Page) -> None:
    pg = page
    sign_in(pg, server, server.admin_key)
    pg.select_option("#tenant-switch", "ui-a")
    pg.click("form[action='/ui/tenant'] button")
    pg.click("#nav-functions")
    assert pg.locator("a.fn-link").all_inner_texts() == ["hello-ui"]
    pg.click("#nav-admin")
    pg.click("#create-key button")
    secret = pg.inner_text("#new-key")
    assert secret.startswith("fbx_")
    with server.client(secret) as client:
        who = client.get("/v1/whoami").json()
    assert who["tenant"] == "ui-a" and who["scope"] == "invoke"
    pg.click("text=back to admin")
    pg.click("#logout")
    pg.wait_for_url(re.compile(r".*/ui/login$"))
