"""Which CPUs service groups get (node/cpusets.py), on a directory tree shaped like a cgroup v1
cpuset hierarchy (the kernel's own is exercised in test_service_groups.py)."""

from __future__ import annotations

import os
from pathlib import Path

from faasbox.node.cpusets import CpuSets, cpu_list


def test_cpu_list_is_written_as_the_kernel_writes_it() -> None:
    assert cpu_list([3, 0, 2]) == "0,2-3"
    assert cpu_list([5]) == "5"
    assert cpu_list([0, 1, 2, 3, 6, 8, 9]) == "0-3,6,8-9"
    assert cpu_list([]) == ""


class FakeHierarchy(CpuSets):
    """A cpuset tree in a temp dir: directories get the kernel's files when made, and this
    process is never moved (``open`` writes its pid to a plain file)."""

    def __init__(self, root: Path, cpus: list[int]) -> None:
        (root / "cpuset.mems").write_text("0")
        (root / "faasbox").mkdir()
        (root / "faasbox" / "cpuset.mems").write_text("0")
        super().__init__(root / "faasbox", "srv-test")
        self._cpus = cpus

    def open(self) -> None:
        assert self.base is not None
        self.base.mkdir()
        (self.base / "shared").mkdir()
        for d in (self.base, self.base / "shared"):
            self._files(d)
        super().open()
        self.cpus = self._cpus  # as if this process's affinity were these

    def assign(self, name: str, cpus: float | None) -> str:
        assert self.base is not None
        if not (self.base / name).exists():
            (self.base / name).mkdir()
            self._files(self.base / name)
        return super().assign(name, cpus)

    @staticmethod
    def _files(d: Path) -> None:
        for f in ("cpuset.cpus", "cpuset.mems", "cgroup.procs"):
            (d / f).touch()


def test_groups_take_the_highest_free_cpus_and_one_always_stays_shared(tmp_path: Path) -> None:
    sets = FakeHierarchy(tmp_path, [0, 1, 2, 3])
    sets.open()
    assert (tmp_path / "faasbox/srv-test/shared/cgroup.procs").read_text() == str(os.getpid())
    assert sets.assign("grp-a.batch", 1.5) == "cpuset.cpus 2-3 dedicated"
    assert sets.shared_cpus() == [0, 1]
    assert (tmp_path / "faasbox/srv-test/shared/cpuset.cpus").read_text() == "0-1"
    assert (tmp_path / "faasbox/srv-test/grp-a.batch/cpuset.cpus").read_text() == "2-3"
    assert sets.assign("grp-b.etl", 1) == "cpuset.cpus 1 dedicated"
    # the last shared CPU is never given away
    assert sets.assign("grp-c.more", 0.5).startswith("cpus shared (1 dedicated CPU would")
    assert sets.dir_of("grp-c.more") is None
    # the same count keeps its CPUs; a smaller one gives some back
    assert sets.assign("grp-a.batch", 2) == "cpuset.cpus 2-3 dedicated"
    assert sets.assign("grp-a.batch", 1) == "cpuset.cpus 3 dedicated"
    assert sets.shared_cpus() == [0, 2]
    sets.release("grp-b.etl")
    assert sets.assign("grp-a.batch", None) == "cpus shared (no cpus set)"
    assert sets.shared_cpus() == [0, 1, 2, 3]
    assert (tmp_path / "faasbox/srv-test/shared/cpuset.cpus").read_text() == "0-3"


def test_without_the_controller_groups_say_why(tmp_path: Path) -> None:
    sets = CpuSets(None, "srv-test", "no cgroup v1 cpuset controller mounted")
    sets.open()
    assert not sets.available
    assert sets.assign("grp-a.batch", 1) == "cpus shared (no cgroup v1 cpuset controller mounted)"
    assert sets.dir_of("grp-a.batch") is None
