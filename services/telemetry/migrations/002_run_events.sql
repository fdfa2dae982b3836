-- Scheduler run events (RunEvent on <fleet>/scheduler/events): run, backup, miss, skipped.
-- Two scheduler instances, or a redelivery, may publish one event twice: the key stores it once.
CREATE TABLE run_events (
    node      text        NOT NULL,
    run_id    text        NOT NULL,
    kind      text        NOT NULL,
    rule      text        NOT NULL,
    action    text        NOT NULL,
    start     timestamptz NOT NULL,
    "end"     timestamptz NOT NULL,
    time      timestamptz NOT NULL,  -- when the scheduler recorded it (RunEvent.ts)
    received  timestamptz NOT NULL,
    sent      timestamptz,           -- backup: when the broker acknowledged the command
    instance  text        NOT NULL,
    detail    text,
    PRIMARY KEY (node, run_id, kind)
);
CREATE INDEX run_events_node_time ON run_events (node, time DESC);
