"""Typed settings for the server: one object, every field also a ``FAASBOX_*`` variable."""

from __future__ import annotations

import dataclasses
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faasbox import errors


def _default_node_memory_mb() -> int:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page = os.sysconf("SC_PAGE_SIZE")
        return int(pages * page / 2**20 * 0.75)
    except (ValueError, OSError):
        return 4096


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data: Path = Path(".faasbox")
    # seconds a call waits for a free instance before 429
    acquire_timeout_s: float = 10.0
    # memory the local node may reserve for instances
    node_memory_mb: int = field(default_factory=_default_node_memory_mb)
    # sandbox: "auto" uses every isolation feature the machine has; "off" runs plain processes
    sandbox: str = "auto"
    # first uid of the range instances run as when the server is root
    sandbox_uid_base: int = 200000
    # how instances start: auto (snapshot template where safe, else fork server, else spawn),
    # template, forkserver or spawn (docs/sandbox.md, "Fast cold start")
    start_mode: str = "auto"
    # children each snapshot template keeps forked and sandboxed ahead of demand (0: none)
    template_spares: int = 1
    # seconds between scaling ticks (autoscaler, keep-alive, pre-warm, idle reaping, floors)
    reap_interval_s: float = 1.0
    # several servers on one store: a server whose heartbeat is this old is dead, and the
    # tasks it leased are taken back by the others
    server_timeout_s: float = 10.0
    # keep-alive/pre-warm policy: faasbox, hybrid or fixed; its numeric parameters as
    # "k=v,k=v" (e.g. "ttl_s=60" for fixed); a function's idle_ttl_s caps what it learns
    keepalive_policy: str = "faasbox"
    keepalive_args: str = ""
    # autoscaler (KPA): averaging windows, planned utilisation, scale-to-zero grace period
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    target_utilization: float = 0.7
    scale_to_zero_grace_s: float = 30.0
    # instances for known load start this long plus the observed cold start ahead of it
    prewarm_lead_s: float = 2.0
    # a second task with the same Idempotency-Key within this window returns the first
    idempotency_window_s: float = 86400.0
    # finished tasks are queryable this long
    task_retention_s: float = 7 * 86400.0
    # webhook destinations (docs/delivery.md): per-attempt timeout, how long retries go on,
    # the backoff between them, attempts in flight (in all, and to one host), and whether
    # private and loopback addresses may be targets (refused by default)
    webhook_timeout_s: float = 10.0
    webhook_max_age_s: float = 86400.0
    webhook_backoff_base_s: float = 2.0
    webhook_backoff_cap_s: float = 300.0
    webhook_concurrency: int = 32
    webhook_per_host: int = 4
    webhook_allow_private: bool = False
    # the store: "" is SQLite in the data dir; postgresql://... is shared by several servers
    store_url: str = ""
    # a worker of `faasbox server --workers`: its supervisor's data dir, whose code cache and
    # admin key the workers share ("": this server's own data dir)
    shared_dir: str = ""
    # SQLite synchronous mode: FULL fsyncs every group commit, NORMAL leaves it to checkpoints
    sqlite_synchronous: str = "FULL"
    log_level: str = "info"
    # tenant limits that a tenant's own limits (PATCH /v1/tenants/NAME) override; 0 = none
    tenant_max_concurrency: int = 100
    tenant_rate_per_s: float = 0.0
    tenant_burst: int = 0
    tenant_max_queued_tasks: int = 1_000_000
    tenant_max_functions: int = 1000
    tenant_max_memory_mb: int = 0
    tenant_max_function_memory_mb: int = 10240
    tenant_max_function_timeout_s: float = 900.0
    # host names the server answers to (comma-separated); empty: the loopback names when
    # bound to loopback, any name otherwise
    server_names: str = ""
    # /metrics without a key
    metrics_public: bool = False
    # sync invokes served in front of the web framework (api/fast.py); 0 sends them through it
    fast_invoke: bool = True
    # metering (docs/cost.md): seconds between flushes of the usage rollups, days they are kept
    metering_flush_s: float = 5.0
    usage_retention_days: float = 90.0
    # the price book (USD): AWS Lambda's public x86 on-demand prices (us-east-1) per GB-s and
    # per million requests; the reserved model's monthly fee per GB reserved; the spot model's
    # discount for interruptible work
    price_gb_s: float = 0.0000166667
    price_per_million_requests: float = 0.20
    price_reserved_gb_month: float = 36.50
    price_spot_discount: float = 0.70
    # no API keys at all (refused on a non-loopback address; for local experiments only)
    insecure_no_auth: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``FAASBOX_<FIELD>`` variables, then explicit ``overrides``."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"FAASBOX_{f.name.upper()}")
            if raw is not None:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls()
        for name, raw in values.items():
            current = getattr(settings, name)
            setattr(settings, name, _coerce(type(current), raw))
        return settings


def _coerce(kind: type, raw: Any) -> Any:
    if isinstance(raw, kind):
        return raw
    if kind is Path:
        return Path(raw)
    if kind is bool:
        return str(raw).lower() in {"1", "true", "yes", "on"}
    return kind(raw)


def lock_data_dir(data: Path) -> int:
    """One server per data dir (the queue's leases assume it; a ``--workers`` supervisor holds
    its own): the open lock file, whose closing releases it. Raises Unavailable when another
    server holds it."""
    fd = os.open(data / "server.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise errors.Unavailable(f"another faasbox server is using {data}") from None
    return fd
