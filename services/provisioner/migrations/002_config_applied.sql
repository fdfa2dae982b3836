-- The config version the node reports in its retained state; NULL until it has reported one.
ALTER TABLE provisioner_devices ADD COLUMN config_applied integer;
