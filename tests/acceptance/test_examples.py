"""The examples: ``make run`` without the package index, and the fund-earnings stack's nightly
cron and sharded job with reduce."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import write_function

REPO = Path(__file__).resolve().parents[2]


def test_make_run_offline_serves_what_deploys(make_server: Any, tmp_path: Path) -> None:
    """``make run`` on a machine without the package index: every example that needs no
    package is served, each deploy that fails is one log line, and a restart with the same
    code and specs makes no new versions."""
    doc = yaml.safe_load((REPO / "examples" / "faasbox.yaml").read_text())
    for body in doc["functions"].values():
        body["path"] = str(REPO / "examples" / body["path"])
    nodeps = write_function(tmp_path / "nodeps", {
        "main.py": "def handler(e, c):\n    return 1\n",
        "requirements.txt": "faasbox-no-such-package==9.9\n"})
    noload = write_function(tmp_path / "noload", {"main.py": "import no_such_module_xyz\n"})
    doc["functions"]["nodeps"] = {"path": str(nodeps), "handler": "main:handler"}
    doc["functions"]["noload"] = {"path": str(noload), "handler": "main:handler"}
    doc["functions"]["nofolder"] = {"path": str(tmp_path / "missing"), "handler": "main:handler"}
    stack = tmp_path / "stack.yaml"
    stack.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {"FAASBOX_DEPLOY": str(stack), "PIP_NO_INDEX": "1"}
    srv = make_server(env=env)

    assert srv.invoke("hello", {"name": "ada"}).json()["hello"] == "ada"
    assert srv.invoke("primes", {"n": 100}).json() == {"n": 100, "primes": 25}
    assert srv.http.get("/v1/functions/fund-earnings/triggers").json()["triggers"]
    log = srv.log.read_text()
    assert "Traceback" not in log, log
    failed = {line.split("cannot deploy ")[1].split(":")[0]: line
              for line in log.splitlines() if "cannot deploy " in line}
    # slugs fails too unless its package is at hand without the index
    assert {"nodeps", "noload", "nofolder"} <= set(failed) <= {"nodeps", "noload", "nofolder",
                                                               "slugs"}, log
    assert "faasbox-no-such-package" in failed["nodeps"]
    assert "no_such_module_xyz" in failed["noload"]
    for name in failed:
        assert srv.http.get(f"/v1/functions/{name}").status_code == 404

    before = {f["name"]: f["latest_version"]
              for f in srv.http.get("/v1/functions").json()["functions"]}
    assert set(before) >= {"hello", "primes", "fund-earnings", "fund-earnings-total"}
    srv.stop()
    again = make_server(env=env, data=srv.data)
    after = {f["name"]: f["latest_version"]
             for f in again.http.get("/v1/functions").json()["functions"]}
    assert after == before == dict.fromkeys(before, 1)
    assert again.invoke("hello", {"name": "bob"}).json()["version"] == 1


def test_fund_earnings_stack_job_and_nightly_cron(make_server: Any, tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "examples" / "faasbox.yaml").read_text())
    # the job's functions only (slugs needs packages from the network)
    funcs = {k: {**v, "path": str(REPO / "examples" / v["path"])}
             for k, v in doc["functions"].items() if k.startswith("fund-earnings")}
    stack = tmp_path / "stack.yaml"
    stack.write_text(yaml.safe_dump({"functions": funcs}, sort_keys=False))
    srv = make_server(env={"FAASBOX_DEPLOY": str(stack)})

    [nightly] = srv.http.get("/v1/functions/fund-earnings/triggers").json()["triggers"]
    assert nightly["name"] == "nightly" and nightly["timezone"] == "Asia/Shanghai"
    fire = dt.datetime.fromtimestamp(nightly["next_fire_at"], dt.UTC)
    assert (fire.hour, fire.minute) == (18, 0)  # 02:00 in Shanghai

    job = nightly["job"]
    resp = srv.http.post("/v1/jobs", json={
        "function": "fund-earnings", "shards": job["shards"],
        "max_parallel": job["max_parallel"], "reduce": job["reduce"]})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    while True:
        view = srv.http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        if view["status"] != "running":
            break
    assert view["status"] == "succeeded", view.get("error")
    result = view["result"]
    assert result["shards"] == 16 and result["users"] == 100_000
    ranges = [r["users"] for r in view["results"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == 99_999
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
    assert result["earnings"] == round(sum(r["earnings"] for r in view["results"]), 2)
