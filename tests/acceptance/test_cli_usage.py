"""``faasbox usage``, ``faasbox cost`` and ``faasbox waste`` against a real server: tables
that fit 80 columns, the same figures as the API with ``--json``, ``--tenant`` for admins."""

from __future__ import annotations

import json

from tests.acceptance.test_cli_tenancy import cli
from tests.conftest import Server

FN = {"main.py": """
    def handler(event, context):
        block = bytearray(40 * 2**20)
        return {"n": len(block)}
"""}


def test_usage_cost_and_waste(server: Server) -> None:
    server.deploy("metered", FN, memory_mb=1024)
    for _ in range(3):
        assert server.invoke("metered", {}).status_code == 200
    narrow = {"COLUMNS": "80"}
    table = cli(server, "usage", env=narrow).stdout
    assert "metered" in table and "GB-s" in table
    assert max(len(line) for line in table.splitlines()) <= 80
    body = json.loads(cli(server, "usage", "--json").stdout)
    fn = next(f for f in body["functions"] if f["function"] == "metered")
    assert fn["total"]["invocations"] == 3
    per_hour = cli(server, "usage", "--function", "metered", "--step", "day").stdout
    assert "start" in per_hour

    costs = cli(server, "cost", env=narrow).stdout
    assert "pay-per-use" in costs and "metered" in costs
    assert max(len(line) for line in costs.splitlines()) <= 80
    models = json.loads(cli(server, "cost", "--json").stdout)
    assert models["total"]["cheapest"] in ("pay_per_use", "reserved", "spot")

    waste = cli(server, "waste", env=narrow).stdout
    assert "metered" in waste and "memory_mb" in waste
    found = json.loads(cli(server, "waste", "--json").stdout)["findings"]
    memory = next(f for f in found if f["function"] == "metered" and f["kind"] == "memory")
    assert memory["suggested_memory_mb"] < 1024

    other = cli(server, "--tenant", "nobody-here", "usage", ok=False).stderr
    assert "nobody-here" in other
    assert "bad" in cli(server, "cost", "--from", "bad", ok=False).stderr
