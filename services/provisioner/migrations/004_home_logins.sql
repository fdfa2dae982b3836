-- A home's operator login (provisioner/home_login): the broker username it was given, NULL while it has none.
-- The broker holds the password (hashed) and the role; this column says whether nodes joining or leaving the
-- home must be added to or taken from that role.
ALTER TABLE provisioner_homes ADD COLUMN login_username text;
