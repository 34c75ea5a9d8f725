-- code packages by content (sha256 of the zip), for the servers that share one file: each has
-- its own data dir, and fetches from here the code another deployed
CREATE TABLE code_blobs (
    sha         TEXT PRIMARY KEY,
    data        BLOB NOT NULL,
    created_at  REAL NOT NULL
);
