-- faasbox schema, version 5: service groups, named pools of dedicated capacity of a tenant.
CREATE TABLE service_groups (
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (tenant, name)
);
