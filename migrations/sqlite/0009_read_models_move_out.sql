-- The read models move to a file of their own beside the log (`migrations/sqlite-views`), so
-- that the projections' commits no longer wait for the appends' write lock, nor the appends
-- for theirs. They are derived from the log alone: the new file starts without checkpoints
-- and the projections build it again from the start of the log (docs/ARCHITECTURE.md).
DROP TABLE ticket_fts;
DROP TABLE ticket_cc;
DROP TABLE ticket_feed;
DROP TABLE ticket_reads;
DROP TABLE tickets;
DROP TABLE analytics_ticket_facts;
DROP TABLE analytics_events;
DROP TABLE analytics_daily_org;
DROP TABLE projection_checkpoints;

-- Which log this is: the read models' file records the identity of the log it was built from,
-- so that read models of another log (or of a later state of this one, as when the log's file
-- is restored from a backup) are refused at start instead of hiding events.
CREATE TABLE log_identity (
    id BLOB NOT NULL
) STRICT;
INSERT INTO log_identity (id) VALUES (randomblob(16));
