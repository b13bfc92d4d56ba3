-- The haproxy-egress event ledger (PostgreSQL 15+). See docs/ledger.md for the queries these serve.

-- State events: append-only. `id` is a UUIDv7 made by the producer, so a replayed spool inserts
-- nothing twice (INSERT ... ON CONFLICT (id) DO NOTHING).
CREATE TABLE events (
    id          uuid        PRIMARY KEY,
    at          timestamptz NOT NULL,
    backend     text        COLLATE "C" NOT NULL CHECK (length(backend) BETWEEN 1 AND 256),
    server      text        COLLATE "C" NOT NULL CHECK (length(server) BETWEEN 1 AND 256),
    kind        text        NOT NULL CHECK (kind IN (
                    'quarantined', 'restored', 'drain_started', 'drained', 'sessions_cut', 'rotated',
                    'rotation_failed', 'exit_ip_changed', 'exit_ip_leak', 'exit_ip_observed')),
    actor       text        NOT NULL CHECK (actor IN ('checker', 'rotator', 'operator')),
    reason      text        CHECK (length(reason) <= 1024),
    old_ip      inet,
    new_ip      inet,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- history <server> --since: one server's events in time order.
CREATE INDEX events_server_at ON events (server, at);
-- report and alerting: all events of a kind in a time range.
CREATE INDEX events_kind_at ON events (kind, at);
-- the exit-IP timeline only reads IP-bearing events: index-only scans per server, in time order.
CREATE INDEX events_ip_timeline ON events (backend, server, at, id) INCLUDE (new_ip)
    WHERE new_ip IS NOT NULL AND kind IN ('rotated', 'exit_ip_changed', 'exit_ip_leak', 'exit_ip_observed');

-- Every (backend, server) any event ever named, kept by a statement trigger: lets the timeline
-- queries probe the index once per server instead of reading all events.
CREATE TABLE ledger_servers (
    backend    text        COLLATE "C" NOT NULL,
    server     text        COLLATE "C" NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (backend, server)
);

CREATE FUNCTION ledger_note_servers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_servers (backend, server)
    SELECT DISTINCT backend, server FROM new_rows
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_note_servers
    AFTER INSERT ON events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_note_servers();

CREATE FUNCTION ledger_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only (% refused)', TG_OP;
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_append_only();

-- The exit-IP timeline: every event that carries new_ip asserts "from `at` on, this server's exit IP is
-- new_ip" (a rotation, a probe that saw a different IP, a first sighting, a leak). Consecutive assertions
-- of the same IP are merged, so each row is one maximal interval [valid_from, valid_to); valid_to is
-- NULL for the current IP. Any instant maps to at most one IP per server. A view, so it is always
-- consistent with the events; it reads only the partial index events_ip_timeline.
CREATE VIEW exit_ip_intervals AS
WITH ip_events AS (
    SELECT backend, server, at, id, new_ip,
           lag(new_ip) OVER (PARTITION BY backend, server ORDER BY at, id) AS prev_ip
    FROM events
    WHERE new_ip IS NOT NULL
      AND kind IN ('rotated', 'exit_ip_changed', 'exit_ip_leak', 'exit_ip_observed')
),
changes AS (
    SELECT backend, server, at, id, new_ip FROM ip_events WHERE prev_ip IS DISTINCT FROM new_ip
)
SELECT backend, server, new_ip AS ip, at AS valid_from,
       lead(at) OVER (PARTITION BY backend, server ORDER BY at, id) AS valid_to
FROM changes;

-- The timeline restricted to [lo, hi], for queries: per server, the IP event in effect at lo (one
-- backward index probe) and the IP events in (lo, hi]. valid_from of the first interval may be later
-- than the true start of that IP (it is the last assertion at or before lo, never after lo), and
-- valid_to is NULL when the IP did not change up to hi; both are exact for overlap tests against
-- [lo, hi]. Cost grows with servers and with changes inside [lo, hi], not with the events' history.
CREATE FUNCTION ledger_exit_ip_intervals(lo timestamptz, hi timestamptz)
RETURNS TABLE (backend text, server text, ip inet, valid_from timestamptz, valid_to timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT p.backend, p.server, p.new_ip, p.at,
           lead(p.at) OVER (PARTITION BY p.backend, p.server ORDER BY p.at, p.id)
    FROM (
        SELECT s.backend, s.server, x.at, x.id, x.new_ip
        FROM ledger_servers s
        CROSS JOIN LATERAL (
            (SELECT e.at, e.id, e.new_ip FROM events e
             WHERE e.backend = s.backend AND e.server = s.server AND e.new_ip IS NOT NULL
               AND e.kind IN ('rotated', 'exit_ip_changed', 'exit_ip_leak', 'exit_ip_observed')
               AND e.at <= $1
             ORDER BY e.at DESC, e.id DESC LIMIT 1)
            UNION ALL
            (SELECT e.at, e.id, e.new_ip FROM events e
             WHERE e.backend = s.backend AND e.server = s.server AND e.new_ip IS NOT NULL
               AND e.kind IN ('rotated', 'exit_ip_changed', 'exit_ip_leak', 'exit_ip_observed')
               AND e.at > $1 AND e.at <= $2)
        ) x
    ) p
$$;

-- Attribution, aggregated by the agents: one row per (client, backend, server, exit IP as the agent knew
-- it, window). Rows grow with distinct clients per window, not with requests. A window is at most one
-- hour long (the CHECK), which lets queries bound window_start and so prune partitions.
CREATE TABLE attribution (
    client_hash  bigint      NOT NULL,
    -- COLLATE "C": names are identifiers; byte order makes every index comparison a memcmp.
    backend      text        COLLATE "C" NOT NULL,
    server       text        COLLATE "C" NOT NULL,
    exit_ip      inet,
    window_start timestamptz NOT NULL,
    first_seen   timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL,
    requests     bigint      NOT NULL CHECK (requests >= 0),
    CHECK (first_seen >= window_start AND last_seen >= first_seen
           AND last_seen < window_start + interval '1 hour'),
    -- the upsert key; exit_ip may be NULL (agent did not know it yet), and NULL must merge with NULL.
    -- Leading client_hash, it also serves who --client.
    CONSTRAINT attribution_key UNIQUE NULLS NOT DISTINCT (client_hash, window_start, backend, server, exit_ip)
) PARTITION BY RANGE (window_start);

-- who --ip: the rows whose window is near an instant. Agents write windows in time order, so a
-- partition's physical order follows window_start and a BRIN index (a few pages per day) narrows the
-- scan to the blocks of [T - 1 hour - window, T + window]; unlike a btree it costs almost nothing per
-- inserted row, which keeps the flush fast. Rows that arrive late only widen some block ranges.
CREATE INDEX attribution_window_brin ON attribution USING brin (window_start) WITH (pages_per_range = 16);

-- Partitions are one UTC day each, named attribution_pYYYYMMDD. Creating is idempotent and serialized
-- (two writers may race); returns the number of partitions created.
CREATE FUNCTION ledger_ensure_partition(day date) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    name text := format('attribution_p%s', to_char(day, 'YYYYMMDD'));
    lo timestamptz := (day::timestamp AT TIME ZONE 'UTC');
    hi timestamptz := ((day + 1)::timestamp AT TIME ZONE 'UTC');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('egress_ledger_partitions'));
    IF to_regclass(name) IS NOT NULL THEN
        RETURN 0;
    END IF;
    -- fillfactor 90: room on each page for HOT updates when a window is flushed twice (the upsert merge).
    EXECUTE format('CREATE TABLE %I PARTITION OF attribution FOR VALUES FROM (%L) TO (%L) WITH (fillfactor = 90)',
                   name, lo, hi);
    RETURN 1;
END;
$$;

-- Today (UTC), yesterday and `days_ahead` days ahead.
CREATE FUNCTION ledger_ensure_partitions(days_ahead integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    created integer := 0;
BEGIN
    FOR d IN -1 .. greatest(days_ahead, 0) LOOP
        created := created + ledger_ensure_partition(today + d);
    END LOOP;
    RETURN created;
END;
$$;

-- Retention: drops whole day partitions that end before now() - retention (a partition drop, not a
-- DELETE). Returns the number dropped.
CREATE FUNCTION ledger_drop_partitions_older_than(retention interval) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
    cutoff date := ((now() - retention) AT TIME ZONE 'UTC')::date;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('egress_ledger_partitions'));
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'attribution'::regclass
          AND c.relname ~ '^attribution_p[0-9]{8}$'
    LOOP
        -- the partition for day D holds [D, D+1); drop it once D+1 <= cutoff.
        IF to_date(substr(part.relname, 14), 'YYYYMMDD') + 1 <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END;
$$;
