"""Code packages, stored content-addressed under the data dir, and their dependencies.

``code/<sha256>/`` holds one extracted package, never changed once written. ``packages/<key>/``
holds what ``pip install --target`` put there for one ``requirements.txt`` (``key`` is the hash of
its text), shared by every version with the same requirements.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from faasbox import errors

MAX_UNZIPPED = 250 * 2**20
MAX_ENTRIES = 20000
PIP_TIMEOUT_S = 900
EXCLUDED = {"__pycache__", ".git", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".faasbox"}


def zip_folder(folder: Path) -> bytes:
    """The deploy archive of a function folder (what the CLI uploads)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if d not in EXCLUDED)
            for name in sorted(files):
                if name.endswith(".pyc"):
                    continue
                path = Path(root) / name
                zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


class CodeStore:
    def __init__(self, data_dir: Path, private: bool = False) -> None:
        """``private``: instances get their code and packages bound into a mount namespace of
        their own, so the folders are closed to other users (0700); else they may traverse
        them (0711) to reach their own."""
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
            for info in infos:
                target = tmp / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            sha = tree_hash(tmp)
            final = self.code_dir(sha)
            if final.exists():
                return sha
            _make_readable(tmp)
            os.replace(tmp, final)
            return sha
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def requirements_key(self, sha: str) -> str | None:
        req = self.code_dir(sha) / "requirements.txt"
        if not req.is_file():
            return None
        text = req.read_bytes()
        lines = [ln.strip() for ln in text.decode(errors="replace").splitlines()]
        if not any(ln and not ln.startswith("#") for ln in lines):
            return None
        # relative paths in requirements resolve against the code, so the code is in the key
        relative = any(ln.startswith((".", "file:")) for ln in lines)
        seed = text + (sha.encode() if relative else b"")
        return hashlib.sha256(seed).hexdigest()

    async def install_requirements(self, sha: str) -> str | None:
        """Install the code's requirements.txt once per distinct content; returns its key."""
        key = self.requirements_key(sha)
        if key is None:
            return None
        lock = self._pip_locks.setdefault(key, asyncio.Lock())
        async with lock:
            final = self.packages_dir(key)
            if final.exists():
                return key
            tmp = Path(tempfile.mkdtemp(dir=self.tmp_root))
            try:
                await _pip_install(self.code_dir(sha), tmp)
                _make_readable(tmp)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return key


async def _pip_install(code: Path, target: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "install", "--target", str(target), "--no-input",
        "--disable-pip-version-check", "--no-warn-script-location", "--quiet",
        "-r", "requirements.txt",
        cwd=code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PIP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise errors.DependencyInstallFailed(
            f"pip install did not finish within {PIP_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        text = out.decode(errors="replace").strip()
        raise errors.DependencyInstallFailed(
            f"installing requirements.txt failed (pip exit code {proc.returncode}):\n"
            + text[-4000:]
        )


def _check_entries(infos: list[zipfile.ZipInfo]) -> None:
    if len(infos) > MAX_ENTRIES:
        raise errors.InvalidRequest(f"the archive has more than {MAX_ENTRIES} entries")
    total = 0
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name).parts
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
    """Code and packages are read by instances running under other uids."""
    root.chmod(0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            p = os.path.join(dirpath, f)
            mode = os.stat(p).st_mode
            os.chmod(p, 0o755 if mode & stat.S_IXUSR else 0o644)
