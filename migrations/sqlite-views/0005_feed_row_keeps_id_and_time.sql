-- A feed row holds its event's id and time in columns of their own, and its `entry` leaves out
-- the members `id`, `at` and `type` (`kind` holds the type), as on PostgreSQL (migration 0021
-- there). Rows written before hold them in `entry` and leave these columns NULL; they read as
-- they always did, and `ticketd rebuild feed` writes them anew (README.md, upgrading).
ALTER TABLE ticket_feed ADD COLUMN event_id BLOB;
ALTER TABLE ticket_feed ADD COLUMN at INTEGER;
