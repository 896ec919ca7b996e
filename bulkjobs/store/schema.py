"""SQLite schema as named migrations, applied once each in list order.

Append a new `(name, sql)` pair to change the schema; never edit one that has shipped.
Applied names are recorded in `schema_migrations`, so features can add their own
tables independently.
"""

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_core",
        """
        CREATE TABLE jobs (
            pk INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT 'default',
            operation TEXT NOT NULL,
            status TEXT NOT NULL,
            total_items INTEGER NOT NULL,
            succeeded INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            cancelled INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            started_at INTEGER,
            completed_at INTEGER,
            updated_at INTEGER NOT NULL,
            expires_at INTEGER,
            cancel_requested_at INTEGER,
            error_code TEXT,
            error_message TEXT,
            seq INTEGER NOT NULL DEFAULT 0,
            ttl_s INTEGER NOT NULL
        );
        CREATE INDEX jobs_tenant_status ON jobs (tenant, status, pk);
        CREATE INDEX jobs_expires ON jobs (expires_at) WHERE expires_at IS NOT NULL;
        CREATE TABLE items (
            job_pk INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            item_id TEXT,
            status TEXT NOT NULL DEFAULT 'pending',
            payload BLOB NOT NULL,
            result BLOB,
            error_code TEXT,
            error_message TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (job_pk, idx)
        ) WITHOUT ROWID;
        CREATE INDEX items_failed ON items (job_pk, idx) WHERE status = 'failed';
        -- deleted jobs whose items are still being removed in small batches
        CREATE TABLE purge_queue (job_pk INTEGER PRIMARY KEY);
        """,
    ),
    (
        "0002_retention_idempotency_retries",
        """
        -- removed jobs: their URL answers 410 until keep_until, then 404
        CREATE TABLE tombstones (
            job_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            reason TEXT NOT NULL,
            deleted_at INTEGER NOT NULL,
            keep_until INTEGER NOT NULL
        );
        CREATE INDEX tombstones_keep_until ON tombstones (keep_until);
        CREATE TABLE idempotency_keys (
            tenant TEXT NOT NULL,
            key TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            job_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            PRIMARY KEY (tenant, key)
        ) WITHOUT ROWID;
        CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
        -- a job created by POST /bulk-jobs/{id}/retry from the failures of another
        CREATE TABLE job_retries (
            job_id TEXT PRIMARY KEY,
            retry_of TEXT NOT NULL
        );
        CREATE INDEX job_retries_source ON job_retries (retry_of);
        """,
    ),
    (
        "0003_webhooks",
        """
        CREATE TABLE webhook_subscriptions (
            job_pk INTEGER PRIMARY KEY,
            url TEXT NOT NULL,
            events TEXT NOT NULL,
            progress_interval_ms INTEGER NOT NULL,
            last_progress_at INTEGER NOT NULL,
            last_milestone INTEGER NOT NULL DEFAULT 0,
            gone_at INTEGER
        );
        -- the outbox: one row per logical message; `dedupe` keeps one per event and job
        CREATE TABLE webhook_messages (
            pk INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            job_pk INTEGER NOT NULL,
            job_id TEXT NOT NULL,
            type TEXT NOT NULL,
            dedupe TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            snapshot BLOB NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            retries INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER,
            delivered_at INTEGER,
            UNIQUE (job_pk, dedupe)
        );
        CREATE INDEX webhook_messages_due ON webhook_messages (next_attempt_at, pk)
            WHERE status = 'pending';
        CREATE INDEX webhook_messages_job ON webhook_messages (job_pk, pk);
        CREATE TABLE webhook_attempts (
            message_pk INTEGER NOT NULL,
            n INTEGER NOT NULL,
            at INTEGER NOT NULL,
            duration_ms INTEGER NOT NULL,
            status_code INTEGER,
            error TEXT,
            next_attempt_at INTEGER,
            PRIMARY KEY (message_pk, n)
        ) WITHOUT ROWID;
        """,
    ),
    (
        "0004_job_pk_high_water",
        """
        -- Job keys are never reused: a deleted job's items (and webhook rows) may outlive
        -- its row, and SQLite would otherwise hand max(pk) + 1 to the next job again.
        CREATE TABLE job_pk_high_water (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            pk INTEGER NOT NULL
        );
        INSERT INTO job_pk_high_water (one, pk)
            SELECT 1, max(coalesce((SELECT max(pk) FROM jobs), 0),
                          coalesce((SELECT max(job_pk) FROM purge_queue), 0));
        CREATE TRIGGER jobs_pk_high_water AFTER INSERT ON jobs BEGIN
            UPDATE job_pk_high_water SET pk = max(pk, NEW.pk) WHERE one = 1;
        END;
        """,
    ),
    (
        "0005_leases",
        """
        -- The store owns running work: a lease holds a span of one job's pending items
        -- for one owner until it expires; next_idx is the job's claim frontier, and
        -- turns order jobs (and tenants) for round-robin claiming.
        ALTER TABLE jobs ADD COLUMN next_idx INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE jobs ADD COLUMN turn INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE jobs ADD COLUMN max_failed INTEGER;
        ALTER TABLE jobs ADD COLUMN stop_status TEXT;
        ALTER TABLE jobs ADD COLUMN stop_code TEXT;
        ALTER TABLE jobs ADD COLUMN stop_message TEXT;
        UPDATE jobs SET stop_status = 'cancelled'
            WHERE cancel_requested_at IS NOT NULL AND status IN ('pending', 'running');
        CREATE INDEX jobs_active ON jobs (tenant, turn, pk)
            WHERE status IN ('pending', 'running');
        CREATE TABLE leases (
            pk INTEGER PRIMARY KEY,
            job_pk INTEGER NOT NULL,
            first_idx INTEGER NOT NULL,
            last_idx INTEGER NOT NULL,
            owner TEXT NOT NULL,
            operation TEXT NOT NULL,
            expires_at INTEGER NOT NULL
        );
        CREATE INDEX leases_job ON leases (job_pk);
        CREATE INDEX leases_owner ON leases (owner);
        CREATE INDEX leases_expires ON leases (expires_at);
        CREATE TABLE tenant_turns (tenant TEXT PRIMARY KEY, turn INTEGER NOT NULL)
            WITHOUT ROWID;
        CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
        """,
    ),
    (
        "0006_staging",
        """
        -- Uploads in progress: their items are stored in batches under a job key that
        -- no job row has yet (invisible to reads and claims) until the job is created.
        CREATE TABLE staging (job_pk INTEGER PRIMARY KEY, started_at INTEGER NOT NULL);
        """,
    ),
]
