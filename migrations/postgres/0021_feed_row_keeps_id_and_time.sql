-- A feed row holds its event's id and time in columns of their own, and its `entry` leaves out
-- the members `id`, `at` and `type` (`kind` holds the type): they were about 95 of a row's 308
-- bytes, and the feed is the largest table a rebuild writes. The feed puts them back as it
-- reads a row. Rows written before hold them in `entry` and leave these columns NULL; they read
-- as they always did, and `ticketd rebuild feed` writes them anew (README.md, upgrading).
ALTER TABLE ticket_feed ADD COLUMN event_id uuid, ADD COLUMN at bigint;
