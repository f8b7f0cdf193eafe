-- Paging that keeps its order while tickets change (CONTRACT §6.1: "paging through with it
-- returns every matching ticket exactly once even while tickets change").
--
-- A cursor remembers the `tickets` checkpoint its first page was read at, and every later page
-- orders tickets by their sort keys as they were then. A ticket whose row has moved past that
-- position needs its keys from before its first later change: `recent_keys` holds, for each
-- change of a sort key in the last two hours of the ticket's events, the position of the change
-- and the keys before it, as JSON `[[tx, seq, recorded_at, last_activity_at, due_sort,
-- priority_rank], …]` (times in microseconds since the Unix epoch), oldest first. Cursors last
-- an hour.
ALTER TABLE tickets ADD COLUMN recent_keys text NOT NULL DEFAULT '[]';

-- The tickets changed since a page's starting position, found without a scan.
CREATE INDEX tickets_position ON tickets (position_tx, position_seq);
