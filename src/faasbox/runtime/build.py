"""A dependency build, confined like an instance before pip runs.

``python -I -m faasbox.runtime.build PLAN_JSON PIP_ARGS...`` is started as root by the code
store: it confines itself (runtime/confine.py: its own mount, IPC and UTS namespaces, the host
read-only, the data dir hidden but for the function's code (read-only) and the build's output
folder, its own uid, no_new_privs, seccomp; the host network, for the package index), then
becomes ``pip install PIP_ARGS...`` in a writable copy of the code (in its private
tmpfs). The code store has already put it in a cgroup of its own
with memory, CPU and pids limits, and kills it after a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from faasbox.runtime.confine import confine


def main() -> None:
    plan = json.loads(sys.argv[1])
    try:
        confine(plan)
    except OSError as exc:
        sys.stderr.write(f"the build sandbox could not be set up: {exc}\n")
        os._exit(70)
    scratch = str(plan["scratch"])
    # a writable copy of the code: build backends write beside the sources
    src = os.path.join(scratch, "src")
    shutil.copytree(str(plan["code"]), src, symlinks=False)
    os.chdir(src)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": scratch,
           "TMPDIR": scratch, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_FIND_LINKS",
                 "PIP_TRUSTED_HOST", "PIP_CONFIG_FILE", "HTTPS_PROXY", "HTTP_PROXY",
                 "NO_PROXY"):
        if name in os.environ:
            env[name] = os.environ[name]
    # -I: not the code folder (the cwd) first on sys.path, where a pip/ of the function's own
    # would run instead of pip
    os.execve(sys.executable, [sys.executable, "-I", "-m", "pip", "install", *sys.argv[2:]],
              env)


if __name__ == "__main__":
    main()
