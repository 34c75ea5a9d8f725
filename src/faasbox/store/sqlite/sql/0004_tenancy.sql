-- faasbox schema, version 4: tenants, API keys, the audit log. Every function is named
-- "<tenant>/<name>" inside the store; what existed before belongs to the default tenant.
CREATE TABLE tenants (
    name        TEXT PRIMARY KEY,
    weight      REAL NOT NULL DEFAULT 1,
    limits      TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
INSERT INTO tenants (name, weight, limits, created_at, updated_at)
    VALUES ('default', 1, '{}', strftime('%s', 'now'), strftime('%s', 'now'));

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    scope        TEXT NOT NULL,
    functions    TEXT,
    description  TEXT NOT NULL DEFAULT '',
    secret_hash  TEXT NOT NULL,
    created_at   REAL NOT NULL,
    revoked_at   REAL
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant);

CREATE TABLE audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL NOT NULL,
    tenant    TEXT NOT NULL,
    key_id    TEXT,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    detail    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_by_tenant ON audit (tenant, at DESC);

UPDATE functions SET name = 'default/' || name WHERE instr(name, '/') = 0;
UPDATE versions SET function = 'default/' || function WHERE instr(function, '/') = 0;
UPDATE invocations SET function = 'default/' || function WHERE instr(function, '/') = 0;
UPDATE tasks SET function = 'default/' || function WHERE instr(function, '/') = 0;
UPDATE task_policies SET function = 'default/' || function WHERE instr(function, '/') = 0;
UPDATE triggers SET function = 'default/' || function WHERE instr(function, '/') = 0;
UPDATE jobs SET function = 'default/' || function WHERE instr(function, '/') = 0;
