"""The tenancy commands of the real ``faasbox`` CLI against a real server: tenant
create/ls/show/update/rm, key create/ls/revoke, login (a 0600 profile under a temporary
XDG_CONFIG_HOME, then used), whoami, audit, and the global --api-key and --tenant."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import Server, open_tempdir, write_function

FAASBOX = [sys.executable, "-m", "faasbox"]


def cli(server: Server, *args: str, key: str | None = "admin", ok: bool = True,
        env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``faasbox ARGS`` with ``key`` in FAASBOX_API_KEY ("admin": the server's; None: no key
    in the environment, so the CLI finds one itself). Nothing of the caller's own faasbox
    set-up leaks in: no key or tenant from the environment, an empty config home, no local
    data dir."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("FAASBOX_API_KEY", "FAASBOX_TENANT", "XDG_CONFIG_HOME")}
    full = {**base, "COLUMNS": "200", "FAASBOX_URL": server.url,
            "FAASBOX_DATA": str(server.data.parent / "no-local-data"),
            "XDG_CONFIG_HOME": str(server.data.parent / "no-config"), **(env or {})}
    if key is not None:
        full["FAASBOX_API_KEY"] = server.admin_key if key == "admin" else key
    proc = subprocess.run([*FAASBOX, *args], capture_output=True, text=True, env=full,
                          timeout=120, input=stdin)
    assert "Traceback" not in proc.stderr, proc.stderr
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0, proc.stdout
    return proc


def new_key(server: Server, tenant: str, *args: str) -> tuple[str, str]:
    """``(key_id, key)`` made with ``faasbox key create``."""
    body = json.loads(cli(server, "key", "create", tenant, *args, "--json").stdout)
    return body["key_id"], body["key"]


def test_tenant_lifecycle(server: Server) -> None:
    made = cli(server, "tenant", "create", "ct-acme", "--weight", "2",
               "--limit", "max_concurrency=5", "--limit", "rate_per_s=50").stdout
    assert "created tenant ct-acme (weight 2)" in made
    assert "already exists" in cli(server, "tenant", "create", "ct-acme", ok=False).stderr
    bad = cli(server, "tenant", "create", "Not A Name", ok=False).stderr
    assert "error:" in bad and "tenant name" in bad

    listed = cli(server, "tenant", "ls").stdout
    assert "ct-acme" in listed and "max_concurrency=5" in listed and "default" in listed
    names = [t["name"] for t in json.loads(cli(server, "tenant", "ls", "--json").stdout)[
        "tenants"]]
    assert {"default", "ct-acme"} <= set(names)

    shown = cli(server, "tenant", "show", "ct-acme").stdout
    assert "ct-acme  weight 2" in shown
    assert [ln.split() for ln in shown.splitlines() if "max_concurrency" in ln] == [
        ["max_concurrency", "5"]]
    assert any(ln.split()[:2] == ["max_functions", "1000"] and "(default)" in ln
               for ln in shown.splitlines())
    assert "usage: running 0, queued_tasks 0, memory_mb 0" in shown

    assert "updated tenant ct-acme" in cli(
        server, "tenant", "update", "ct-acme", "--weight", "3",
        "--limit", "max_concurrency=7", "--limit", "rate_per_s=default").stdout
    body = json.loads(cli(server, "tenant", "show", "ct-acme", "--json").stdout)
    assert body["weight"] == 3 and body["limits"] == {"max_concurrency": 7}
    assert body["effective_limits"]["rate_per_s"] == 0  # back to the default
    assert "give --weight or --limit" in cli(server, "tenant", "update", "ct-acme",
                                             ok=False).stderr
    refused = cli(server, "tenant", "update", "ct-acme", "--limit", "max_concurrency=0",
                  ok=False).stderr
    assert "max_concurrency" in refused

    # a tenant with a function cannot go; once it has none it can, and its keys with it
    _, key = new_key(server, "ct-acme", "--scope", "developer")
    folder = write_function(open_tempdir() / "ct-fn", {
        "main.py": "def handler(e, c):\n    return 'acme'\n"})
    cli(server, "deploy", str(folder), key=key)
    assert "still has functions" in cli(server, "tenant", "rm", "ct-acme", ok=False).stderr
    cli(server, "rm", "ct-fn", key=key)
    assert "deleted tenant ct-acme" in cli(server, "tenant", "rm", "ct-acme").stdout
    assert "ct-acme" not in cli(server, "tenant", "ls").stdout
    assert "no tenant" in cli(server, "tenant", "show", "ct-acme", ok=False).stderr
    assert "API key" in cli(server, "whoami", key=key, ok=False).stderr  # its keys went too


def test_keys_create_ls_revoke(server: Server) -> None:
    cli(server, "tenant", "create", "ct-keys")
    out = cli(server, "key", "create", "ct-keys", "--scope", "invoke", "--function", "a",
              "--function", "b", "--description", "ci deploys").stdout
    assert "created invoke key" in out and "It is shown only now" in out
    key = out.strip().splitlines()[-1]
    assert key.startswith("fbx_")
    ident = key.split("_")[1]

    table = cli(server, "key", "ls", "ct-keys").stdout
    row = next(ln for ln in table.splitlines() if ident in ln)
    assert "invoke" in row and "a, b" in row and "ci deploys" in row
    assert key.split("_")[2] not in table  # no secrets in listings
    listed = json.loads(cli(server, "key", "ls", "ct-keys", "--json").stdout)["keys"]
    assert [(k["key_id"], k["functions"]) for k in listed] == [(ident, ["a", "b"])]
    assert "secret" not in json.dumps(listed) and key not in json.dumps(listed)

    me = json.loads(cli(server, "whoami", "--json", key=key).stdout)
    assert me == {"key_id": ident, "tenant": "ct-keys", "scope": "invoke",
                  "functions": ["a", "b"]}
    assert f"revoked key {ident}" in cli(server, "key", "revoke", "ct-keys", ident).stdout
    refused = cli(server, "whoami", key=key, ok=False).stderr
    assert "needs an API key" in refused and "faasbox login" in refused
    assert ident not in cli(server, "key", "ls", "ct-keys").stdout
    assert "has no key" in cli(server, "key", "revoke", "ct-keys", ident, ok=False).stderr
    bad = cli(server, "key", "create", "ct-keys", "--scope", "developer", "--function", "a",
              ok=False).stderr
    assert "invoke key" in bad
    # only an admin manages keys
    _, dev = new_key(server, "ct-keys", "--scope", "developer")
    refused = cli(server, "key", "ls", "ct-keys", key=dev, ok=False).stderr
    assert "a developer key cannot do this (needs admin)" in refused


def test_login_writes_a_private_profile_that_later_commands_use(server: Server) -> None:
    cli(server, "tenant", "create", "ct-login")
    ident, key = new_key(server, "ct-login", "--scope", "developer")
    config_home = open_tempdir() / "config"
    env = {"XDG_CONFIG_HOME": str(config_home)}
    profile = config_home / "faasbox" / "config.toml"

    assert "needs an API key" in cli(server, "whoami", key=None, env=env, ok=False).stderr
    wrong = cli(server, "login", "--url", server.url, "--api-key", key[:-1] + "x",
                key=None, env=env, ok=False).stderr
    assert "needs an API key" in wrong
    assert not profile.exists()  # a key the server refuses is not kept

    out = cli(server, "login", "--url", server.url, "--api-key", key, key=None, env=env).stdout
    assert "logged in" in out and "developer key of tenant ct-login" in out
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    assert key in profile.read_text()
    # the next commands find the key in the profile for this URL
    assert cli(server, "whoami", key=None, env=env).stdout.strip() == (
        f"tenant ct-login, developer key {ident}")
    assert json.loads(cli(server, "ls", "--json", key=None, env=env).stdout) == {
        "functions": []}
    # a second profile for another URL leaves the first in place; the key from stdin (not on
    # the command line, where ps shows it); a file made readable meanwhile is private again
    profile.chmod(0o644)
    cli(server, "login", "--url", server.url + "/", "--profile", "admin", key=None, env=env,
        stdin=server.admin_key + "\n")
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    text = profile.read_text()
    assert key in text and server.admin_key in text
    # --api-key beats the profile
    assert "tenant default, admin key" in cli(
        server, "--api-key", server.admin_key, "whoami", key=None, env=env).stdout


def test_whoami_and_audit(server: Server) -> None:
    cli(server, "tenant", "create", "ct-audit")
    ident, dev = new_key(server, "ct-audit", "--scope", "developer")
    admin_id = server.admin_key.split("_")[1]
    assert cli(server, "whoami").stdout.strip() == f"tenant default, admin key {admin_id}"
    folder = write_function(open_tempdir() / "ct-audited", {
        "main.py": "def handler(e, c):\n    return 1\n"})
    cli(server, "deploy", str(folder), key=dev)
    cli(server, "tenant", "update", "ct-audit", "--limit", "max_functions=5")

    own = json.loads(cli(server, "audit", "--json", key=dev).stdout)["audit"]
    assert {r["tenant"] for r in own} == {"ct-audit"}
    assert [(r["action"], r["key_id"], r["target"]) for r in own][:4] == [
        ("tenant.update", admin_id, "ct-audit"),
        ("function.deploy", ident, "ct-audited"),
        ("key.create", admin_id, ident),
        ("tenant.create", admin_id, "ct-audit")]
    table = cli(server, "audit", "-n", "3", key=dev).stdout
    assert "function.deploy" in table and ident in table and "tenant.update" in table
    everything = json.loads(cli(server, "audit", "--json", "-n", "1000").stdout)["audit"]
    assert {"default", "ct-audit"} <= {r["tenant"] for r in everything}
    cli(server, "rm", "ct-audited", key=dev)


def test_tenant_option_lets_an_admin_act_on_a_tenant(server: Server, tmp_path: Path) -> None:
    cli(server, "tenant", "create", "ct-other")
    folder = write_function(tmp_path / "ct-there", {
        "main.py": "def handler(e, c):\n    return {'tenant': __import__('os').environ"
                   "['FAASBOX_TENANT']}\n"})
    assert "deployed ct-there" in cli(server, "--tenant", "ct-other", "deploy",
                                      str(folder)).stdout
    assert json.loads(cli(server, "--tenant", "ct-other", "invoke", "ct-there").stdout) == {
        "tenant": "ct-other"}
    there = json.loads(cli(server, "--tenant", "ct-other", "ls", "--json").stdout)
    assert [f["name"] for f in there["functions"]] == ["ct-there"]
    here = json.loads(cli(server, "ls", "--json").stdout)
    assert "ct-there" not in [f["name"] for f in here["functions"]]
    via_env = json.loads(cli(server, "ls", "--json", env={"FAASBOX_TENANT": "ct-other"}).stdout)
    assert via_env == there
    audit = json.loads(cli(server, "--tenant", "ct-other", "audit", "--json").stdout)["audit"]
    assert {r["tenant"] for r in audit} == {"ct-other"}
    assert "no tenant" in cli(server, "--tenant", "ct-ghost", "ls", ok=False).stderr

    _, dev = new_key(server, "ct-other", "--scope", "developer")
    refused = cli(server, "--tenant", "default", "ls", key=dev, ok=False).stderr
    assert "only an admin key can act on another tenant" in refused
    cli(server, "--tenant", "ct-other", "rm", "ct-there")
