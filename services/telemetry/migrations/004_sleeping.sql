-- A node asleep by plan (status "sleeping") is not online, and not lost either: kept beside online, in the
-- node's row and in its availability history.
ALTER TABLE nodes ADD COLUMN sleeping boolean NOT NULL DEFAULT false;
ALTER TABLE availability ADD COLUMN sleeping boolean NOT NULL DEFAULT false;
