"""Code packages, stored content-addressed under the data dir, and their dependencies.

``code/<sha256>/`` holds one extracted package, never changed once written. ``packages/<key>/``
holds what ``pip install --target`` put there for one ``requirements.txt`` (``key`` is the hash of
its text), shared by every version with the same requirements.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import io
import os
import shutil
import stat
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path, PurePosixPath

from faasbox import errors

MAX_UNZIPPED = 250 * 2**20
MAX_ENTRIES = 20000
MAX_NAME = 1024  # bytes of one entry's path
MAX_DEPTH = 64  # folders deep
PIP_TIMEOUT_S = 900
EXCLUDED = {"__pycache__", ".git", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".faasbox"}


def zip_folder(folder: Path) -> bytes:
    """The deploy archive of a function folder (what the CLI uploads). A link is followed only
    to a file inside the folder: one to a file outside it (``~/.ssh/id_rsa``,
    ``/proc/self/environ`` and the deploy key in it) would upload that file to the function;
    it is refused (InvalidSpec), as is anything that is not a file (a fifo would block)."""
    top = folder.resolve()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if d not in EXCLUDED)
            for name in sorted(files):
                if name.endswith(".pyc"):
                    continue
                path = Path(root) / name
                rel = path.relative_to(folder).as_posix()
                real = path.resolve()
                if not real.is_relative_to(top):
                    raise errors.InvalidSpec(
                        f"{rel} is a link to {real}, outside the function's folder: copy the"
                        " file in (a deploy never uploads files from outside the folder)")
                if not real.is_file():
                    raise errors.InvalidSpec(f"{rel} is not a regular file")
                zf.write(real, rel)
    return buf.getvalue()


class CodeStore:
    def __init__(self, data_dir: Path, private: bool = False,
                 pip: PipRunner | None = None) -> None:
        """``private``: instances get their code and packages bound into a mount namespace of
        their own, so the folders are closed to other users (0700); else they may traverse
        them (0711) to reach their own."""
        self.pip = pip or plain_pip
        self.code_root = data_dir / "code"
        self.packages_root = data_dir / "packages"
        self.tmp_root = data_dir / "tmp"
        for d in (self.code_root, self.packages_root, self.tmp_root):
            d.mkdir(parents=True, exist_ok=True)
        self.code_root.chmod(0o700 if private else 0o711)
        self.packages_root.chmod(0o700 if private else 0o711)
        self.tmp_root.chmod(0o700)
        self._pip_locks: dict[str, asyncio.Lock] = {}

    def code_dir(self, sha: str) -> Path:
        return self.code_root / sha

    def packages_dir(self, key: str) -> Path:
        return self.packages_root / key

    async def put_zip(self, data: bytes) -> str:
        """Extract a zip archive safely and store it; returns its content hash."""
        with _disk_errors():
            return await asyncio.to_thread(self._put_zip, data)

    def _put_zip(self, data: bytes) -> str:
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise errors.InvalidRequest(f"the code is not a valid zip archive: {exc}") from None
        infos = zf.infolist()
        _check_entries(infos)
        tmp = Path(tempfile.mkdtemp(dir=self.tmp_root))
        try:
            try:
                _extract(zf, infos, tmp)
            except errors.FaasboxError:
                raise
            except OSError as exc:
                if exc.errno in DISK_ERRNOS:
                    raise
                raise errors.UnsafeArchive(
                    f"the code archive cannot be unpacked: {type(exc).__name__}: {exc}"
                ) from None
            except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError,
                    ValueError) as exc:
                # a bad CRC, a truncated or encrypted entry, an unknown compression, a name
                # that is both a file and a folder, a path too deep: the archive, not us
                raise errors.UnsafeArchive(
                    f"the code archive cannot be unpacked: {type(exc).__name__}: {exc}"
                ) from None
            sha = tree_hash(tmp)
            final = self.code_dir(sha)
            if final.exists():
                return sha
            _make_readable(tmp)
            _publish(tmp, final)
            return sha
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def requirements_key(self, sha: str, source_builds: bool = False) -> str | None:
        """The key of the code's requirements (None: it has none); raises InvalidSpec (422)
        for a requirement that names a local path or a version-control URL."""
        req = self.code_dir(sha) / "requirements.txt"
        if not req.is_file():
            return None
        text = req.read_bytes()
        lines = [ln.strip() for ln in text.decode(errors="replace").splitlines()]
        if not any(ln and not ln.startswith("#") for ln in lines):
            return None
        check_requirements(lines, source_builds)
        # a wheel shipped in the code (./x.whl) resolves against it: the code is in the key
        relative = any(ln.startswith("./") for ln in lines)
        seed = (text + (sha.encode() if relative else b"")
                + (b"\0source-builds" if source_builds else b""))
        return hashlib.sha256(seed).hexdigest()

    async def install_requirements(self, sha: str, source_builds: bool = False) -> str | None:
        """Install the code's requirements.txt once per distinct content; returns its key.
        Only wheels, unless the version opts in to ``source_builds``."""
        key = self.requirements_key(sha, source_builds)
        if key is None:
            return None
        lock = self._pip_locks.setdefault(key, asyncio.Lock())
        async with lock:
            final = self.packages_dir(key)
            if final.exists():
                return key
            # servers sharing this cache (--workers) install each key once: the others wait
            with _disk_errors():
                fd = await self._lock_key(key)
                try:
                    if final.exists():
                        return key
                    tmp = Path(tempfile.mkdtemp(dir=self.tmp_root))
                    try:
                        await _pip_install(self.code_dir(sha), tmp, source_builds, self.pip)
                        _make_readable(tmp)
                        _publish(tmp, final)
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
                finally:
                    os.close(fd)  # releases the lock
        return key

    async def _lock_key(self, key: str) -> int:
        """An exclusive lock on ``key`` among the processes sharing this cache (closing the
        descriptor releases it). Polled, so that a deploy cancelled meanwhile holds nothing."""
        fd = os.open(self.tmp_root / f"{key}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC,
                     0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    await asyncio.sleep(0.2)  # another server installs the same requirements
        except BaseException:
            os.close(fd)
            raise


VCS_PREFIXES = ("git+", "hg+", "svn+", "bzr+")
LOCAL_PREFIXES = (".", "/", "~", "file:")
FILE_OPTIONS = ("-e", "--editable", "-r", "--requirement", "-c", "--constraint", "-f",
                "--find-links", "--index-url", "-i", "--extra-index-url")
# the pip options a requirements.txt line may start with, spelled out (pip also takes any
# unambiguous prefix of an option, "--extra-ind", which a list of refused names would miss)
ALLOWED_OPTIONS = ("--no-index", "--pre", "--prefer-binary", "--only-binary")


def check_requirements(lines: list[str], source_builds: bool = False) -> None:
    """Refuse what pip would fetch from this machine's files or from version control: paths
    outside the function's own code (absolute, ``~``, ``..``), ``file:`` URLs, VCS URLs
    (``git+...``), editable installs, nested requirement or constraint files, other indexes and
    find-links. A wheel shipped in the code itself (``./name.whl``, no ``..``) is allowed; a
    source tree in it (``./pkg``) only with ``source_builds`` (pip builds a local tree even
    with ``--only-binary``, running its build hooks)."""
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        first = line.split()[0]
        if line.startswith("./") and ".." not in PurePosixPath(first).parts:
            if first.endswith(".whl") or source_builds:
                continue  # inside the code folder (the archive has no symlinks)
            raise errors.InvalidSpec(
                f"requirements.txt: {raw!r} is a source tree: building it runs its code;"
                " ship a wheel, or set source_builds: true in the spec")
        target = line.split("@", 1)[1].strip() if "@" in line else line
        option = first.split("=", 1)[0]
        if line.startswith("-") and option not in ALLOWED_OPTIONS and option not in FILE_OPTIONS:
            raise errors.InvalidSpec(
                f"requirements.txt: {raw!r}: the pip option {option!r} is not allowed; allowed: "
                + ", ".join(ALLOWED_OPTIONS))
        if line.startswith(FILE_OPTIONS) or line.split()[0] in FILE_OPTIONS:
            raise errors.InvalidSpec(
                f"requirements.txt: {raw!r}: pip options that read files or other indexes are "
                "not allowed; list packages from the package index")
        if (line.startswith(LOCAL_PREFIXES) or target.startswith(LOCAL_PREFIXES)
                or line.lower().startswith(VCS_PREFIXES)
                or target.lower().startswith(VCS_PREFIXES)):
            raise errors.InvalidSpec(
                f"requirements.txt: {raw!r} is a local path or a version-control URL; only "
                "packages from the package index can be installed")


# runs ``pip install ARGS`` for a code folder into a target: (exit code or None on timeout,
# output); the node's BuildSandbox confines it (node/builds.py)
PipRunner = Callable[[Path, Path, list[str], float], Awaitable[tuple[int | None, bytes]]]


async def plain_pip(code: Path, target: Path, args: list[str],
                    timeout_s: float) -> tuple[int | None, bytes]:
    """pip as the server's own user (where builds cannot be sandboxed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "install", *args,
        cwd=code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None, b""
    return proc.returncode, out


async def _pip_install(code: Path, target: Path, source_builds: bool = False,
                       runner: PipRunner = plain_pip) -> None:
    binary = [] if source_builds else ["--only-binary=:all:"]
    args = ["--target", str(target), "--no-input", "--disable-pip-version-check",
            "--no-warn-script-location", "--quiet", *binary, "-r", "requirements.txt"]
    returncode, out = await runner(code, target, args, PIP_TIMEOUT_S)
    if returncode is None:
        raise errors.DependencyInstallFailed(
            f"pip install did not finish within {PIP_TIMEOUT_S} s")
    if returncode != 0:
        text = out.decode(errors="replace").strip()
        raise errors.DependencyInstallFailed(
            f"installing requirements.txt failed (pip exit code {returncode}):\n"
            + text[-4000:]
        )


DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


@contextlib.contextmanager
def _disk_errors() -> Iterator[None]:
    """A disk that cannot take what is written is the store's trouble (503), not the
    caller's."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            raise errors.StoreUnavailable(f"the code store cannot write: {exc}") from None
        raise


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; if another server sharing the cache put the same
    content there first, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
            raise


def _extract(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], root: Path) -> None:
    for info in infos:
        target = root / info.filename
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)


def _check_entries(infos: list[zipfile.ZipInfo]) -> None:
    if len(infos) > MAX_ENTRIES:
        raise errors.InvalidRequest(f"the archive has more than {MAX_ENTRIES} entries")
    total = 0
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name).parts
        if not parts or len(name) > MAX_NAME or len(parts) > MAX_DEPTH:
            raise errors.UnsafeArchive(f"archive entry {name[:80]!r} has an empty, too long or"
                                       f" too deep name (at most {MAX_DEPTH} folders deep)")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in name or "\\" in name:
            raise errors.UnsafeArchive(f"archive entry {name!r} escapes the function folder")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise errors.UnsafeArchive(f"archive entry {name!r} is a symbolic link")
        total += info.file_size
        if total > MAX_UNZIPPED:
            raise errors.PayloadTooLarge(
                f"the code unpacks to more than {MAX_UNZIPPED // 2**20} MB")


def tree_hash(root: Path) -> str:
    """sha256 over every file's relative path and content, in sorted order."""
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _make_readable(root: Path) -> None:
    """Code and packages are read by instances running under other uids. A build wrote them:
    a symbolic link in there (to /etc/shadow, say) is never followed, nor swapped in midway
    (each entry is opened relative to its folder's fd, without following links)."""
    root.chmod(0o755)
    for _, dirnames, filenames, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name in dirnames + filenames:
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                mode = os.fstat(fd).st_mode
                if stat.S_ISDIR(mode):
                    os.chmod(f"/proc/self/fd/{fd}", 0o755)
                elif stat.S_ISREG(mode):
                    os.chmod(f"/proc/self/fd/{fd}", 0o755 if mode & stat.S_IXUSR else 0o644)
                # links, fifos, sockets: left as they are
            finally:
                os.close(fd)
