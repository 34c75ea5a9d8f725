"""The fund-earnings example: the stack's nightly cron and the sharded job with reduce."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


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
