"""Code packages: safe extraction, content addressing, the deploy archive."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from faasbox import codestore, errors
from faasbox.codestore import CodeStore, tree_hash, zip_folder


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize("name", ["../x.py", "/etc/x.py", "a/../../x.py", "C:\\x.py", "a\\..\\x"])
def test_escaping_entries_are_refused(tmp_path: Path, name: str) -> None:
    store = CodeStore(tmp_path)
    with pytest.raises(errors.UnsafeArchive):
        asyncio.run(store.put_zip(_zip({"main.py": b"", name: b"x"})))


def test_symlinks_are_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.UnsafeArchive, match="symbolic link"):
        asyncio.run(CodeStore(tmp_path).put_zip(_zip({"main.py": b""}, symlink="link")))


def test_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidRequest, match="not a valid zip"):
        asyncio.run(CodeStore(tmp_path).put_zip(b"hello"))


def test_same_content_same_address(tmp_path: Path) -> None:
    store = CodeStore(tmp_path)
    a = asyncio.run(store.put_zip(_zip({"main.py": b"A", "pkg/mod.py": b"B"})))
    b = asyncio.run(store.put_zip(_zip({"pkg/mod.py": b"B", "main.py": b"A"})))
    c = asyncio.run(store.put_zip(_zip({"main.py": b"A", "pkg/mod.py": b"C"})))
    assert a == b != c
    assert (store.code_dir(a) / "pkg" / "mod.py").read_bytes() == b"B"
    assert tree_hash(store.code_dir(a)) == a
    mode = (store.code_dir(a) / "main.py").stat().st_mode
    assert mode & stat.S_IROTH  # readable by instances running under other uids
    assert list((tmp_path / "tmp").iterdir()) == []


def test_zip_folder_skips_caches(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    names = zipfile.ZipFile(io.BytesIO(zip_folder(tmp_path))).namelist()
    assert names == ["main.py"]


def test_requirements_key(tmp_path: Path) -> None:
    store = CodeStore(tmp_path)
    none = asyncio.run(store.put_zip(_zip({"main.py": b"", "requirements.txt": b"# nothing\n"})))
    assert store.requirements_key(none) is None
    a = asyncio.run(store.put_zip(_zip({"main.py": b"1", "requirements.txt": b"six\n"})))
    b = asyncio.run(store.put_zip(_zip({"main.py": b"2", "requirements.txt": b"six\n"})))
    assert store.requirements_key(a) == store.requirements_key(b)  # shared by content
    assert store.requirements_key(a, source_builds=True) != store.requirements_key(a)
    c = asyncio.run(store.put_zip(_zip({"main.py": b"1", "requirements.txt": b"./w.whl\n"})))
    d = asyncio.run(store.put_zip(_zip({"main.py": b"2", "requirements.txt": b"./w.whl\n"})))
    assert store.requirements_key(c) != store.requirements_key(d)  # in the code: per code
    for bad in (b"../w.whl\n", b"./a/../../w.whl\n", b"/abs/pkg\n", b"~/pkg\n", b"file:///x.whl\n", b"git+https://h/r.git\n",
                b"pkg @ git+https://h/r.git\n", b"pkg @ file:///x\n", b"-e .\n",
                b"-r other.txt\n", b"--extra-index-url https://x\n",
                # pip takes a prefix of an option: "--extra-ind" is "--extra-index-url"
                b"--extra-ind https://x\n", b"--find-l /root\n", b"--no-binary :all:\n",
                b"--index=https://x\n"):
        sha = asyncio.run(store.put_zip(_zip({"main.py": bad, "requirements.txt": bad})))
        with pytest.raises(errors.InvalidSpec) as err:
            store.requirements_key(sha)
        assert err.value.status == 422, bad


def test_the_allowed_pip_options_pass() -> None:
    codestore.check_requirements(["--no-index", "--prefer-binary", "--only-binary=:all:",
                                  "--pre", "six==1.16.0 --hash=sha256:" + "0" * 64])


def test_what_a_build_leaves_is_made_readable_without_following_links(tmp_path: Path) -> None:
    """A build's output is made readable by the root server: a link in it (to a file of the
    host) is left alone, its target untouched."""
    victim = tmp_path / "shadow"
    victim.write_text("secret")
    victim.chmod(0o600)
    out = tmp_path / "out"
    (out / "pkg").mkdir(parents=True)
    (out / "pkg" / "mod.py").write_text("x = 1")
    (out / "pkg" / "mod.py").chmod(0o600)
    (out / "pkg" / "tool").write_text("#!/bin/sh")
    (out / "pkg" / "tool").chmod(0o700)
    (out / "pkg").chmod(0o700)
    (out / "to-file").symlink_to(victim)
    (out / "to-dir").symlink_to(tmp_path)
    tmp_path.chmod(0o700)
    codestore._make_readable(out)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "pkg").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "pkg" / "mod.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "pkg" / "tool").stat().st_mode) == 0o755


def test_servers_sharing_the_cache_each_store_the_same_package(tmp_path: Path) -> None:
    """Two servers (--workers) unpack the same archive at once: the second to finish finds
    the first's folder in place, keeps it, and leaves no temporary folder."""
    data = _zip({"main.py": b"def handler(e, c):\n    return 1\n"})
    a, b = CodeStore(tmp_path), CodeStore(tmp_path)
    unpacked = tmp_path / "other"
    unpacked.mkdir()
    (unpacked / "main.py").write_bytes(b"def handler(e, c):\n    return 1\n")
    sha = tree_hash(unpacked)
    # b has unpacked it and is about to publish, when a publishes first
    assert a._put_zip(data) == sha
    tmp = tmp_path / "tmp" / "late"
    tmp.mkdir()
    (tmp / "main.py").write_bytes(b"def handler(e, c):\n    return 1\n")
    codestore._publish(tmp, b.code_dir(sha))  # no error: the same content is there
    assert (b.code_dir(sha) / "main.py").read_bytes().startswith(b"def handler")
    assert b._put_zip(data) == sha
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.is_dir()] == ["late"]


def test_an_install_waits_for_another_servers_and_a_cancelled_wait_holds_nothing(
        tmp_path: Path) -> None:
    store = CodeStore(tmp_path)
    key = "k" * 64
    other = os.open(tmp_path / "tmp" / f"{key}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(other, fcntl.LOCK_EX)  # another server installs these requirements

    async def main() -> None:
        waiting = asyncio.create_task(store._lock_key(key))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        fcntl.flock(other, fcntl.LOCK_UN)
        # nothing left holding it: the lock is free for anyone
        probe = os.open(tmp_path / "tmp" / f"{key}.lock", os.O_RDWR)
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(probe)
        fd = await store._lock_key(key)
        os.close(fd)

    try:
        asyncio.run(main())
    finally:
        os.close(other)


def test_a_deploy_never_uploads_a_file_from_outside_the_folder(tmp_path: Path) -> None:
    """A hostile repository deployed by CI: a link in the function's folder to a key of the
    machine, or to /proc/self/environ (the deploy key), is refused; a link inside is kept."""
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE")
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "main.py").write_text("def handler(e, c):\n    return 1\n")
    (fn / "shared.py").symlink_to(fn / "main.py")  # inside: its content goes in
    names = zipfile.ZipFile(io.BytesIO(zip_folder(fn))).namelist()
    assert sorted(names) == ["main.py", "shared.py"]
    for target in (secret, Path("/proc/self/environ")):
        (fn / "notes.txt").unlink(missing_ok=True)
        (fn / "notes.txt").symlink_to(target)
        with pytest.raises(errors.InvalidSpec) as err:
            zip_folder(fn)
        assert "outside the function's folder" in err.value.message

