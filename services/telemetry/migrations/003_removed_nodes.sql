-- When the node was removed: its retained status was cleared (an empty retained message, published by the
-- provisioner's removal). A removed node is left out of the devices answer; hearing from it again clears this.
ALTER TABLE nodes ADD COLUMN removed timestamptz;
