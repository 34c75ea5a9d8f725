"""Sandbox feature detection, including the degraded paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faasbox.node.sandbox import (
    SandboxFeatures,
    _detect_uid,
    detect,
    first_inaccessible,
    rlimits,
)
from tests.conftest import open_tempdir


def test_sandbox_off_reports_every_feature_off(tmp_path: Path) -> None:
    feats = detect(tmp_path, "off")
    assert not feats.enabled and not feats.memory_limit and not feats.uid_drop
    rows = {name: (active, detail) for name, active, detail in feats.report()}
    assert rows["memory limit"][0] is False
    assert "disabled" in rows["unprivileged uid"][1]


def test_first_inaccessible_finds_a_closed_directory() -> None:
    tmp_path = open_tempdir()
    closed = tmp_path / "closed"
    inner = closed / "inner"
    inner.mkdir(parents=True)
    (inner / "f.py").write_text("")
    (inner / "f.py").chmod(0o644)
    tmp_path.chmod(0o755)
    closed.chmod(0o700)
    assert first_inaccessible(inner / "f.py") == closed
    closed.chmod(0o711)
    inner.chmod(0o755)
    assert first_inaccessible(inner / "f.py") is None
    (inner / "f.py").chmod(0o600)
    assert first_inaccessible(inner / "f.py") == inner / "f.py"


@pytest.mark.skipif(os.geteuid() != 0, reason="uid drop needs root")
def test_uid_drop_is_refused_when_the_data_dir_is_closed() -> None:
    closed = open_tempdir() / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    feats = SandboxFeatures()  # no mount namespace: instances reach their code on disk
    _detect_uid(feats, closed / "data")
    assert feats.uid_drop is False
    assert str(closed) in feats.reasons["uid"] and "chmod o+x" in feats.reasons["uid"]
    # with one, the data dir is a tmpfs of the instance's own: its modes do not matter
    with_ns = SandboxFeatures(confine={"mount namespace"})
    _detect_uid(with_ns, closed / "data")
    assert with_ns.uid_drop is True


def test_rlimits_fall_back_when_cgroups_are_missing() -> None:
    bare = SandboxFeatures(uid_drop=True)
    limits = rlimits(bare, 256)
    assert limits["RLIMIT_DATA"] == (256 + 64) * 2**20
    assert limits["RLIMIT_NPROC"] > 0
    with_cgroups = SandboxFeatures(cgroup_version=1, cgroup_dirs={
        "memory": Path("/x"), "pids": Path("/y")})
    assert "RLIMIT_DATA" not in rlimits(with_cgroups, 256)
    assert "RLIMIT_NPROC" not in rlimits(with_cgroups, 256)
    assert rlimits(with_cgroups, 256)["RLIMIT_CORE"] == 0


def test_egress_slots_are_leased_host_wide(tmp_path: Path) -> None:
    """Two servers with other uid bases (or one whose uids wrapped past the slot count) whose
    instances' uids map to one slot: the second gets the next free one, never the first's
    (whose link and addresses it would otherwise take over)."""
    from faasbox.node.environment import InstanceEnvironment
    from faasbox.node.network import SLOTS

    locks = tmp_path / "locks"
    locks.mkdir()
    feats = SandboxFeatures(uid_lock_dir=locks)
    a = InstanceEnvironment(tmp_path / "a", feats, uid_base=200000)
    b = InstanceEnvironment(tmp_path / "b", feats, uid_base=210000)
    first = a.lease_slot(200005)
    assert first == 5
    second = b.lease_slot(210005)  # slot 5 of its own base: held by a
    assert second != first and 0 <= second < SLOTS
    assert a.lease_slot(200005 + SLOTS) not in (first, second)  # a's own uids wrapping
    a.release_slot(first)
    assert b.lease_slot(210005) == first  # free again
