-- 'unprovisioned': the node said it was un-provisioned (DELETE /api/restart); its credentials and chip stay
-- bound, and its next online provisions it again.
ALTER TABLE provisioner_devices DROP CONSTRAINT provisioner_devices_status_check;
ALTER TABLE provisioner_devices ADD CONSTRAINT provisioner_devices_status_check
    CHECK (status IN ('pending', 'provisioned', 'unprovisioned', 'revoked'));
-- Why the last online with this device's credentials was refused (chip_mismatch, chip_in_use), the chip
-- that came online, and the reason in words; cleared when the device is provisioned.
ALTER TABLE provisioner_devices ADD COLUMN refused_code text;
ALTER TABLE provisioner_devices ADD COLUMN refused_chip text;
ALTER TABLE provisioner_devices ADD COLUMN refused_reason text;
