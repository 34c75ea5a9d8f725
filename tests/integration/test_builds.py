"""A function's dependency build runs sandboxed: a build hook runs as an unprivileged build
uid, cannot see the data dir, and what it built is installed for the function."""

from __future__ import annotations

import pytest

from tests.conftest import Server

BACKEND = '''
import base64, hashlib, os, pathlib, zipfile

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    data = pathlib.Path.cwd().parents[2]
    try:
        open(data / "faasbox.db", "rb").close()
        db = "readable"
    except OSError as exc:
        db = type(exc).__name__
    try:
        os.listdir(data / "code")
        code = "listed"
    except OSError as exc:
        code = type(exc).__name__
    body = f"UID = {os.getuid()}\\nDB = {db!r}\\nCODE = {code!r}\\n".encode()
    name = "probe_build-0.1-py3-none-any.whl"
    files = {"probe_build.py": body,
             "probe_build-0.1.dist-info/METADATA":
                 b"Metadata-Version: 2.1\\nName: probe-build\\nVersion: 0.1\\n",
             "probe_build-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\\nGenerator: test\\n"
                 b"Root-Is-Purelib: true\\nTag: py3-none-any\\n"}
    record = ""
    for path, content in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=")
        record += f"{path},sha256={digest.decode()},{len(content)}\\n"
    record += "probe_build-0.1.dist-info/RECORD,,\\n"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for path, content in files.items():
            zf.writestr(path, content)
        zf.writestr("probe_build-0.1.dist-info/RECORD", record)
    return name
'''
FN = {
    "main.py": """
        import probe_build
        def handler(event, context):
            return {"uid": probe_build.UID, "db": probe_build.DB, "code": probe_build.CODE}
    """,
    "requirements.txt": "./p\n",
    "p/pyproject.toml": """
        [build-system]
        requires = []
        build-backend = "backend"
        backend-path = ["."]
    """,
    "p/backend.py": BACKEND,
}


def test_a_build_hook_runs_as_a_build_uid_and_sees_no_data_dir(server: Server) -> None:
    rows = {r["feature"]: r for r in server.node()["sandbox"]}
    if not rows.get("sandboxed builds", {}).get("active"):
        pytest.skip("builds cannot be sandboxed here: "
                    + rows.get("sandboxed builds", {}).get("detail", "unknown"))
    server.deploy("b-probe", FN, source_builds=True)
    probe = server.invoke("b-probe").json()
    assert probe["uid"] != 0
    assert probe["db"] in ("FileNotFoundError", "PermissionError")
    assert probe["code"] in ("FileNotFoundError", "PermissionError")


def test_without_source_builds_a_local_source_tree_is_refused(server: Server) -> None:
    resp = server.deploy("b-nosrc", FN, expect=422)
    assert "source tree" in resp.json()["error"]["message"]
