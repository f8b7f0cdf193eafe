-- A search from the text index (CONTRACT §6.1 `q`, few matches) ranked each match by its
-- sort key from `tickets_pkey` (migrations 0007, 0010): at 1,000,000 tickets a two-word agent
-- search with 2,600 matches spent 11-17 ms on those probes, more than on the index itself.
-- `ticket_search` now carries each ticket's sort keys and log position beside its text, kept by
-- the same projection in the same transaction as `tickets`, so a search with no filter on
-- `tickets` ranks its matches from the rows the text index already led to and reads whole
-- tickets for the page only (docs/PERFORMANCE.md, session 15). The keys change with nearly
-- every event while the text does not, so their updates touch no indexed column: the free
-- room that `fillfactor` leaves lets them stay HOT (no GIN entry rewritten). Rows are copied
-- into a new table rather than updated in place, which would rewrite every GIN entry.
ALTER TABLE ticket_search RENAME TO ticket_search_old;
ALTER TABLE ticket_search_old RENAME CONSTRAINT ticket_search_pkey TO ticket_search_old_pkey;
DROP INDEX ticket_search_staff;

CREATE TABLE ticket_search (
    ticket_id        uuid     PRIMARY KEY,
    head             tsvector NOT NULL,
    public_comments  tsvector NOT NULL,
    private_comments tsvector NOT NULL,
    -- As in `tickets`; 0 only until the end of the batch that wrote the row.
    last_activity_at bigint   NOT NULL DEFAULT 0,
    created_at       bigint   NOT NULL DEFAULT 0,
    due_sort         bigint   NOT NULL DEFAULT 0,
    priority_rank    bigint   NOT NULL DEFAULT 0,
    position_tx      bigint   NOT NULL DEFAULT 0,
    position_seq     bigint   NOT NULL DEFAULT 0
) WITH (fillfactor = 80);

INSERT INTO ticket_search
SELECT o.ticket_id, o.head, o.public_comments, o.private_comments, t.last_activity_at,
       t.created_at, t.due_sort, t.priority_rank, t.position_tx, t.position_seq
FROM ticket_search_old o JOIN tickets t ON t.id = o.ticket_id;
DROP TABLE ticket_search_old;

CREATE INDEX ticket_search_staff ON ticket_search
    USING gin ((head || public_comments || private_comments)) WITH (fastupdate = off);
ALTER INDEX ticket_search_staff ALTER COLUMN 1 SET STATISTICS 1000;
ANALYZE ticket_search;
