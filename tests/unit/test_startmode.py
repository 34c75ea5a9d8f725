"""The pure rules of how an instance process is started (node/startmode.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from faasbox.node import startmode
from faasbox.node.sandbox import detect


def test_ways_fastest_first() -> None:
    assert startmode.ways("spawn", 3) == ["spawn"]
    assert startmode.ways("forkserver", 3) == ["fork", "spawn"]
    assert startmode.ways("auto", 3) == ["template", "fork", "spawn"]
    assert startmode.ways("template", 3) == ["template", "fork", "spawn"]
    # the deploy's load check (version 0) is never worth a template
    assert startmode.ways("template", startmode.CHECK_VERSION) == ["fork", "spawn"]


def test_template_due() -> None:
    assert not startmode.template_due("auto", 1)
    assert startmode.template_due("auto", 2)
    assert startmode.template_due("template", 1)
    assert not startmode.template_due("forkserver", 5)
    assert not startmode.template_due("spawn", 5)
    assert startmode.template_awaited("template") and not startmode.template_awaited("auto")
    # a start ahead of demand (min_instances, a schedule) waits for the template in auto mode
    assert startmode.template_due("auto", 1, ahead=True)
    assert startmode.template_awaited("auto", ahead=True)
    assert not startmode.template_due("forkserver", 1, ahead=True)
    assert not startmode.template_awaited("forkserver", ahead=True)
    # a burst (several cold starts under way at once): made at once, and waited for
    burst = startmode.BURST_COLD_STARTS
    assert not startmode.template_due("auto", 1, under_way=burst - 1)
    assert not startmode.template_awaited("auto", under_way=burst - 1)
    assert startmode.template_due("auto", 1, under_way=burst)
    assert startmode.template_awaited("auto", under_way=burst)
    assert not startmode.template_due("forkserver", 1, under_way=burst)
    assert not startmode.template_awaited("spawn", under_way=burst)


def test_check_mode() -> None:
    for mode in startmode.START_MODES:
        assert startmode.check_mode(mode) == mode
    with pytest.raises(ValueError, match="start mode"):
        startmode.check_mode("zygote")


def test_top_level_names(tmp_path: Path) -> None:
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "main.py").write_text("")
    (code / "fast.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (code / "requirements.txt").write_text("")
    (code / "not-a-module").mkdir()
    packages = tmp_path / "packages"
    (packages / "numpy").mkdir(parents=True)
    (packages / "numpy-2.3.5.dist-info").mkdir()
    (packages / "six.py").write_text("")
    names = startmode.top_level_names([str(code), str(packages), str(tmp_path / "missing")])
    assert names == {"pkg", "main", "fast", "numpy", "six"}


def test_shadowed() -> None:
    preloaded = {"asyncio", "decimal", "faasbox", "__main__"}
    assert startmode.shadowed({"main", "numpy"}, preloaded) == []
    assert startmode.shadowed({"main", "decimal", "asyncio"}, preloaded) == ["asyncio", "decimal"]
    assert startmode.shadowed({"__main__"}, preloaded) == []


def test_doctor_reports_the_start_mode(tmp_path: Path) -> None:
    rows = {name: (active, detail) for name, active, detail in
            detect(tmp_path, "off", "forkserver").report()}
    assert rows["fast start"][0] and "fork server" in rows["fast start"][1]
    rows = {name: (active, detail) for name, active, detail in
            detect(tmp_path, "off", "spawn").report()}
    assert not rows["fast start"][0]
    with pytest.raises(ValueError, match="FAASBOX_START_MODE"):
        detect(tmp_path, "off", "fast")
