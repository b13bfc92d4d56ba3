-- Exact exit IPs in every HAProxy log line (egress-spoa's `exit=` tag).
--
-- 1. A new event kind, `exit_ip_unknown`: from `at` on, this server's exit IP is not known (a rotation
--    took it out, or its tunnel failed) until the next event that carries new_ip. The agents tag such
--    a server `exit=unknown` rather than the previous IP. It carries no IP and does not move the
--    exit-IP timeline (exit_ip_intervals): `who` keeps answering from the IP-bearing events.
ALTER TABLE events DROP CONSTRAINT events_kind_check;
ALTER TABLE events ADD CONSTRAINT events_kind_check CHECK (kind IN (
    'quarantined', 'restored', 'drain_started', 'drained', 'sessions_cut', 'rotated',
    'rotation_failed', 'exit_ip_changed', 'exit_ip_leak', 'exit_ip_observed', 'exit_ip_unknown'));

-- 2. Push: every statement that inserts an event about an exit IP notifies channel `egress_exit_ips`
--    (delivered at commit; Postgres folds identical notifications of one transaction into one), so
--    every listening agent reloads its map within milliseconds instead of at its next poll.
CREATE FUNCTION ledger_notify_exit_ips() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows
               WHERE kind IN ('rotated', 'exit_ip_changed', 'exit_ip_leak', 'exit_ip_observed',
                              'exit_ip_unknown')) THEN
        PERFORM pg_notify('egress_exit_ips', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify_exit_ips
    AFTER INSERT ON events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_notify_exit_ips();
