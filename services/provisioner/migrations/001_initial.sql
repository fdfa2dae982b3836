-- Homes: a named place with the IANA zone its nodes' clocks follow.
CREATE TABLE provisioner_homes (
    home_id    text PRIMARY KEY,
    tz         text NOT NULL,
    created    timestamptz NOT NULL DEFAULT now()
);

-- One row per registered device; a revoked row stays as history.
CREATE TABLE provisioner_devices (
    node             text PRIMARY KEY,
    home_id          text NOT NULL REFERENCES provisioner_homes (home_id),
    device_name      text NOT NULL,
    provisioning_id  text NOT NULL UNIQUE,
    chip_id          text,
    status           text NOT NULL CHECK (status IN ('pending', 'provisioned', 'revoked')),
    created          timestamptz NOT NULL DEFAULT now(),
    expires          timestamptz,
    first_connected  timestamptz,
    last_seen        timestamptz,
    username         text NOT NULL,
    credential_hash  text NOT NULL,
    config           jsonb NOT NULL,
    config_version   integer NOT NULL DEFAULT 1,
    caps             jsonb NOT NULL DEFAULT '[]'
);

-- A name is taken only while its device is active; a revoked device frees it.
CREATE UNIQUE INDEX provisioner_devices_active_name
    ON provisioner_devices (home_id, lower(device_name)) WHERE status <> 'revoked';
CREATE UNIQUE INDEX provisioner_devices_active_chip
    ON provisioner_devices (chip_id) WHERE status <> 'revoked' AND chip_id IS NOT NULL;
CREATE INDEX provisioner_devices_pending ON provisioner_devices (expires) WHERE status = 'pending';
