"""Function names inside the platform are ``<tenant>/<name>``.

The API takes and shows plain names; everything below it (store, queue, scheduler, triggers,
records) uses the qualified name, so that two tenants can both have ``hello`` and no lookup can
cross from one tenant to another: a tenant only ever builds names under its own prefix.
"""

from __future__ import annotations

SEP = "/"
DEFAULT_TENANT = "default"


def qualify(tenant: str, name: str) -> str:
    return f"{tenant}{SEP}{name}"


def tenant_of(qualified: str) -> str:
    tenant, sep, _ = qualified.partition(SEP)
    return tenant if sep else DEFAULT_TENANT


def display(qualified: str) -> str:
    """The name a tenant knows a function by."""
    return qualified.rpartition(SEP)[2]


def within(qualified: str, name: str) -> str:
    """``name`` (plain, or already qualified) in the tenant of ``qualified``. Never a function
    of another tenant: a name qualified with one is put under this tenant too (where no
    function can have it)."""
    tenant = tenant_of(qualified)
    return name if name.startswith(f"{tenant}{SEP}") else qualify(tenant, name)


def prefix_range(tenant: str) -> tuple[str, str]:
    """Bounds ``lo <= name < hi`` of the qualified names of one tenant (for SQL ranges)."""
    return f"{tenant}{SEP}", f"{tenant}{chr(ord(SEP) + 1)}"
