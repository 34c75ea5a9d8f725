"""Deploying: versions, pinning, config-only deploys, dependencies, load checks, bad input."""

from __future__ import annotations

import base64
import io
import os
import zipfile
from pathlib import Path

from tests.conftest import Server

ECHO = {"main.py": """
    VERSION = "one"
    def handler(event, context):
        return {"event": event, "code": VERSION, "version": context.version}
"""}


def test_deploy_invoke_redeploy_and_pin(server: Server) -> None:
    first = server.deploy("d-pin", ECHO)
    assert first.status_code == 201
    assert first.json()["latest_version"] == 1
    assert server.invoke("d-pin", {"x": 1}).json() == {"event": {"x": 1}, "code": "one",
                                                       "version": 1}
    second = server.deploy("d-pin", {"main.py": ECHO["main.py"].replace('"one"', '"two"')})
    assert second.status_code == 200
    assert second.json()["latest_version"] == 2
    assert server.invoke("d-pin", 5).json()["code"] == "two"
    pinned = server.invoke("d-pin", 5, version=1)
    assert pinned.json() == {"event": 5, "code": "one", "version": 1}
    assert pinned.headers["x-faasbox-version"] == "1"
    assert server.invoke("d-pin", 5, version="latest").json()["version"] == 2
    versions = server.http.get("/v1/functions/d-pin/versions").json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["code_sha256"] != versions[1]["code_sha256"]


def test_config_only_deploy_reuses_code(server: Server) -> None:
    server.deploy("d-cfg", ECHO)
    resp = server.deploy("d-cfg", memory_mb=256, env={"MODE": "b"})
    body = resp.json()
    assert body["latest_version"] == 2
    assert body["spec"]["memory_mb"] == 256
    v1, v2 = server.http.get("/v1/functions/d-cfg/versions").json()["versions"]
    assert v1["code_sha256"] == v2["code_sha256"]


def test_same_code_is_stored_once(server: Server) -> None:
    a = server.deploy("d-same-a", ECHO).json()
    b = server.deploy("d-same-b", ECHO).json()
    assert a["code_sha256"] == b["code_sha256"]
    assert (server.data / "code" / a["code_sha256"] / "main.py").is_file()


def test_environment_is_the_functions_only(server: Server) -> None:
    server.deploy("d-env", {"main.py": """
        import os
        def handler(event, context):
            return {"env": dict(os.environ), "cwd": os.getcwd(), "uid": os.getuid()}
    """}, env={"GREETING": "hi"})
    body = server.invoke("d-env").json()
    env = body["env"]
    assert env["GREETING"] == "hi"
    assert env["FAASBOX_FUNCTION_NAME"] == "d-env"
    assert env["TMPDIR"] == body["cwd"] == env["HOME"]
    assert "scratch" in body["cwd"]
    allowed = {"GREETING", "PATH", "LANG", "HOME", "TMPDIR", "PYTHONDONTWRITEBYTECODE",
               "PYTHONUNBUFFERED", "FAASBOX_FUNCTION_NAME", "FAASBOX_FUNCTION_VERSION",
               "FAASBOX_FUNCTION_MEMORY_MB", "FAASBOX_TENANT"}
    assert set(env) <= allowed, set(env) - allowed
    if os.geteuid() == 0:  # the suite must exercise the real sandbox when it can
        assert server.feature("unprivileged uid"), server.node()["sandbox"]
        assert body["uid"] >= 200000


def _wheel(name: str, module_text: str) -> bytes:
    """A minimal pure-Python wheel, so the dependency test needs no network."""
    buf = io.BytesIO()
    dist = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{name}.py", module_text)
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true"
                                     "\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return buf.getvalue()


def test_requirements_installed_per_version(server: Server) -> None:
    folder = server.folder("d-deps", {
        "main.py": """
            import tinydep
            def handler(event, context):
                return {"answer": tinydep.ANSWER, "where": tinydep.__file__}
        """,
        "requirements.txt": "--no-index\n./tinydep-1.0-py3-none-any.whl\n",
    })
    (folder / "tinydep-1.0-py3-none-any.whl").write_bytes(_wheel("tinydep", "ANSWER = 42\n"))
    body = server.deploy("d-deps", folder=folder).json()
    assert body["packages"]
    result = server.invoke("d-deps").json()
    assert result["answer"] == 42
    assert f"packages/{body['packages']}" in result["where"]


def test_a_pip_of_the_functions_own_is_not_what_installs(server: Server) -> None:
    """pip runs with the code folder as its cwd: ``python -m pip`` would import a ``pip/`` of
    the function's own from there (as the build's uid, or as the server's user where builds
    cannot be sandboxed). The real pip installs; the fake one never runs."""
    folder = server.folder("d-fakepip", {
        "main.py": """
            import tinydep
            def handler(event, context):
                return tinydep.ANSWER
        """,
        "requirements.txt": "--no-index\n./tinydep-1.0-py3-none-any.whl\n",
        "pip/__init__.py": "",
        "pip/__main__.py": "import sys\nprint('FAKE PIP RAN')\nsys.exit(0)\n",
    })
    (folder / "tinydep-1.0-py3-none-any.whl").write_bytes(_wheel("tinydep", "ANSWER = 7\n"))
    body = server.deploy("d-fakepip", folder=folder).json()  # the fake would install nothing
    assert body["packages"]
    assert server.invoke("d-fakepip").json() == 7


def test_failed_dependency_install_fails_the_deploy(server: Server) -> None:
    resp = server.deploy("d-baddeps", {
        "main.py": "def handler(e, c):\n    return 1\n",
        "requirements.txt": "--no-index\nfaasbox-no-such-package==9.9\n",
    }, expect=422)
    err = resp.json()["error"]
    assert err["code"] == "dependency_install_failed"
    assert "faasbox-no-such-package" in err["message"]
    assert server.http.get("/v1/functions/d-baddeps").status_code == 404


def test_import_error_is_reported_at_deploy(server: Server) -> None:
    resp = server.deploy("d-imp", {"main.py": "import no_such_module_xyz\n"
                                              "def handler(e, c):\n    return 1\n"}, expect=422)
    err = resp.json()["error"]
    assert err["code"] == "load_error"
    assert "no_such_module_xyz" in err["message"]
    assert "Traceback" in err["traceback"]
    assert server.http.get("/v1/functions/d-imp").status_code == 404


def test_syntax_error_and_missing_handler_at_deploy(server: Server) -> None:
    bad = server.deploy("d-syn", {"main.py": "def handler(e, c)\n    return 1\n"}, expect=422)
    assert bad.json()["error"]["type"] == "SyntaxError"
    missing = server.deploy("d-miss", {"main.py": "def other(e, c):\n    return 1\n"},
                            expect=422)
    assert "handler" in missing.json()["error"]["message"]


def test_init_error_on_invoke_when_check_skipped(server: Server) -> None:
    server.deploy("d-init", {"main.py": "raise RuntimeError('boom at import')\n"}, check=False)
    resp = server.invoke("d-init", {})
    assert resp.status_code == 500
    err = resp.json()["error"]
    assert err["code"] == "init_error"
    assert "boom at import" in err["message"]


def test_invalid_specs_are_422(server: Server) -> None:
    cases = [
        {"handler": "main:handler", "memory_mb": 64},
        {"handler": "main:handler", "memory_mb": 20000},
        {"handler": "main:handler", "timeout_s": 901},
        {"handler": "nocolon"},
        {"handler": "main:handler", "min_instances": 5, "max_instances": 2},
        {"handler": "main:handler", "env": {"BAD-NAME": "x"}},
        {"handler": "main:handler", "unknown_field": 1},
    ]
    for body in cases:
        resp = server.http.put("/v1/functions/d-invalid", json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["error"]["code"] == "invalid_spec"
    bad_name = server.http.put("/v1/functions/Bad..Name", json={"handler": "main:handler"})
    assert bad_name.status_code == 422


def test_new_function_needs_code(server: Server) -> None:
    resp = server.http.put("/v1/functions/d-nocode", json={"handler": "main:handler"})
    assert resp.status_code == 422
    assert "code" in resp.json()["error"]["message"]


def _zip(entries: dict[str, bytes]) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return base64.b64encode(buf.getvalue()).decode()


def test_zip_entry_escaping_its_folder_is_400(server: Server, tmp_path: Path) -> None:
    for evil in ("../evil.py", "/abs/evil.py", "a/../../evil.py"):
        body = {"handler": "main:handler",
                "code_zip": _zip({"main.py": b"def handler(e, c): return 1\n", evil: b"x"})}
        resp = server.http.put("/v1/functions/d-evil", json=body)
        assert resp.status_code == 400, (evil, resp.text)
        assert resp.json()["error"]["code"] == "unsafe_archive"
    assert not (server.data / "evil.py").exists()
    assert not (server.data.parent / "evil.py").exists()


def test_malformed_deploy_bodies(server: Server) -> None:
    resp = server.http.put("/v1/functions/d-mal", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "malformed_json"
    not_zip = server.http.put("/v1/functions/d-mal", json={
        "handler": "main:handler", "code_zip": base64.b64encode(b"plain text").decode()})
    assert not_zip.status_code == 400
    bad_b64 = server.http.put("/v1/functions/d-mal", json={
        "handler": "main:handler", "code_zip": "%%%"})
    assert bad_b64.status_code == 400


def test_create_conflict_list_describe_delete(server: Server) -> None:
    code = _zip({"main.py": b"def handler(e, c):\n    return 'ok'\n"})
    created = server.http.post("/v1/functions", json={"name": "d-crud", "handler": "main:handler",
                                                      "code_zip": code})
    assert created.status_code == 201, created.text
    again = server.http.post("/v1/functions", json={"name": "d-crud", "handler": "main:handler",
                                                    "code_zip": code})
    assert again.status_code == 409
    names = [f["name"] for f in server.http.get("/v1/functions").json()["functions"]]
    assert "d-crud" in names
    assert server.invoke("d-crud").json() == "ok"
    assert len(server.instances("d-crud")) == 1
    assert server.http.delete("/v1/functions/d-crud").status_code == 204
    assert server.http.get("/v1/functions/d-crud").status_code == 404
    assert server.invoke("d-crud").status_code == 404
    assert server.http.delete("/v1/functions/d-crud").status_code == 404


def test_openapi_spec_lists_the_api(server: Server) -> None:
    spec = server.http.get("/openapi.json").json()
    for path in ("/v1/functions/{name}", "/v1/functions/{name}/invoke", "/v1/invocations",
                 "/v1/functions/{name}/instances", "/healthz", "/metrics"):
        assert path in spec["paths"], path


def test_a_deploy_of_the_same_content_makes_no_new_version(server: Server) -> None:
    first = server.deploy("d-idem", ECHO, memory_mb=256)
    assert first.status_code == 201 and first.json()["unchanged"] is False
    again = server.deploy("d-idem", ECHO, memory_mb=256)
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["unchanged"] is True and body["latest_version"] == 1
    assert body["load_check_ms"] is None  # nothing was loaded
    config_only = server.deploy("d-idem", memory_mb=256)  # the latest code, the same spec
    assert config_only.json()["unchanged"] is True
    changed = server.deploy("d-idem", ECHO, memory_mb=512)
    assert changed.json()["unchanged"] is False and changed.json()["latest_version"] == 2
    versions = server.http.get("/v1/functions/d-idem/versions").json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]


def test_patch_changes_only_the_fields_it_names(server: Server) -> None:
    server.deploy("d-patch", ECHO, env={"MODE": "a"}, timeout_s=10, max_instances=3)
    resp = server.http.patch("/v1/functions/d-patch", json={"memory_mb": 256})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["latest_version"] == 2 and body["unchanged"] is False
    spec = body["spec"]
    assert spec["memory_mb"] == 256
    assert (spec["env"], spec["timeout_s"], spec["max_instances"]) == ({"MODE": "a"}, 10, 3)
    v1, v2 = server.http.get("/v1/functions/d-patch/versions").json()["versions"]
    assert v1["code_sha256"] == v2["code_sha256"]
    same = server.http.patch("/v1/functions/d-patch", json={"memory_mb": 256})
    assert same.status_code == 200 and same.json()["unchanged"] is True
    assert same.json()["latest_version"] == 2
    reset = server.http.patch("/v1/functions/d-patch", json={"env": None}).json()
    assert reset["spec"]["env"] == {} and reset["spec"]["timeout_s"] == 10  # null: the default
    assert server.invoke("d-patch", 1).json()["version"] == 3


def test_patch_with_new_code_keeps_the_spec(server: Server) -> None:
    server.deploy("d-patch-code", ECHO, timeout_s=7)
    code = _zip({"main.py": b"def handler(e, c):\n    return 'two'\n"})
    resp = server.http.patch("/v1/functions/d-patch-code", json={"code_zip": code})
    assert resp.status_code == 200, resp.text
    assert resp.json()["spec"]["timeout_s"] == 7 and resp.json()["latest_version"] == 2
    assert server.invoke("d-patch-code").json() == "two"


def test_invalid_patches(server: Server) -> None:
    server.deploy("d-patch-bad", ECHO, max_instances=3)
    cases = [({"memory_mb": 64}, "memory_mb"), ({"unknown_field": 1}, "unknown_field"),
             ({"min_instances": 5}, "min_instances cannot exceed max_instances"),
             ({"handler": None}, "handler"), ({"check": "maybe"}, "check")]
    for patch, message in cases:
        resp = server.http.patch("/v1/functions/d-patch-bad", json=patch)
        assert resp.status_code == 422, (patch, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "invalid_spec" and message in error["message"], error
    malformed = server.http.patch("/v1/functions/d-patch-bad", content=b"{nope",
                                  headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "malformed_json"
    missing = server.http.patch("/v1/functions/d-patch-nobody", json={"memory_mb": 256})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "function_not_found"
    versions = server.http.get("/v1/functions/d-patch-bad/versions").json()["versions"]
    assert len(versions) == 1


def test_load_error_message_says_it_once(server: Server) -> None:
    resp = server.deploy("d-once", {"main.py": "import no_such_module_abc\n"}, expect=422)
    message = resp.json()["error"]["message"]
    assert message.count("load") == 1, message
    assert "no_such_module_abc" in message
