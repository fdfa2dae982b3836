-- Telemetry is range-partitioned by day on "time" so retention drops whole partitions.
-- time = the device's clock when the message carried one (device_clock), else the received time.
CREATE TABLE telemetry (
    node         text        NOT NULL,
    time         timestamptz NOT NULL,
    received     timestamptz NOT NULL,
    stored       timestamptz NOT NULL DEFAULT clock_timestamp(),
    seq          bigint      NOT NULL,
    device_clock boolean     NOT NULL,
    readings     jsonb       NOT NULL,
    -- A redelivered message has the same node, device time and seq: stored once.
    -- In this order the same index also serves "one node between two times".
    UNIQUE (node, time, seq)
) PARTITION BY RANGE (time);

-- Every node ever heard of, its current availability and when it was last heard.
CREATE TABLE nodes (
    node                 text PRIMARY KEY,
    first_seen           timestamptz NOT NULL,
    last_seen            timestamptz NOT NULL,
    online               boolean,
    availability_changed timestamptz
);

-- Each online/offline change, with its time.
CREATE TABLE availability (
    id      bigserial   PRIMARY KEY,
    node    text        NOT NULL,
    online  boolean     NOT NULL,
    time    timestamptz NOT NULL
);
CREATE INDEX availability_node_time ON availability (node, time);

-- Latest state per node; an older seq never overwrites a newer one.
CREATE TABLE node_state (
    node      text PRIMARY KEY,
    seq       bigint      NOT NULL,
    relay     text        NOT NULL,
    mode      text        NOT NULL,
    rule      text,
    run_id    text,
    until     timestamptz,
    time      timestamptz,
    received  timestamptz NOT NULL,
    state     jsonb       NOT NULL
);

-- Latest info per node.
CREATE TABLE node_info (
    node      text PRIMARY KEY,
    chip_id   text        NOT NULL,
    fw        text        NOT NULL,
    received  timestamptz NOT NULL,
    info      jsonb       NOT NULL
);

-- Device error logs and crash reports; seq is unique per node, so redelivery stores once.
CREATE TABLE device_logs (
    node         text        NOT NULL,
    seq          bigint      NOT NULL,
    time         timestamptz,
    received     timestamptz NOT NULL,
    level        text        NOT NULL,
    code         text        NOT NULL,
    msg          text        NOT NULL,
    reset_cause  text,
    trace        text,
    PRIMARY KEY (node, seq)
);
CREATE INDEX device_logs_node_received ON device_logs (node, received DESC);

-- Answers to commands that carried an id.
CREATE TABLE command_acks (
    node       text        NOT NULL,
    id         text        NOT NULL,
    status     text        NOT NULL,
    error      text,
    state_seq  bigint,
    received   timestamptz NOT NULL,
    PRIMARY KEY (node, id)
);
