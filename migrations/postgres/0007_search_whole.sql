-- Search (CONTRACT §6.1 `q`) from one GIN index per audience instead of one per part.
--
-- With an index per part, "every word in some part" became, per word, a union of three index
-- scans and then an intersection of those bitmaps: each common word materialised tens of
-- thousands of entries first (12 ms of a 23 ms search for two words in 2,600 of 1,000,000
-- tickets). An index on the whole text a caller may see takes every word as a key of one scan,
-- and GIN intersects the posting lists itself (2 ms). The parts stay as they are: an edit
-- replaces `head` alone, and a comment appends to its part.
--
-- Staff search all of it; customers never the private comments (CONTRACT §5).
--
-- `fastupdate` is off, so GIN keeps no pending list. With one, the insert that found the list
-- full (4 MB) merged it into the index; that insert was a `tickets` projection batch, which
-- then took 130 ms instead of 40 (lag p99 112-145 ms at 32 clients, 71-84 without the list).
CREATE INDEX ticket_search_staff ON ticket_search
    USING gin ((head || public_comments || private_comments)) WITH (fastupdate = off);
CREATE INDEX ticket_search_customer ON ticket_search
    USING gin ((head || public_comments)) WITH (fastupdate = off);

-- As in 0004, the planner's estimate of a word's tickets picks how a search runs; statistics
-- on an index expression are kept with the index.
ALTER INDEX ticket_search_staff ALTER COLUMN 1 SET STATISTICS 1000;
ALTER INDEX ticket_search_customer ALTER COLUMN 1 SET STATISTICS 1000;

DROP INDEX ticket_search_head;
DROP INDEX ticket_search_public;
DROP INDEX ticket_search_private;

-- The part columns' own statistics no longer steer anything.
ALTER TABLE ticket_search
    ALTER COLUMN head SET STATISTICS -1,
    ALTER COLUMN public_comments SET STATISTICS -1,
    ALTER COLUMN private_comments SET STATISTICS -1;

-- A search ranks its matches by the list's sort key before it reads a whole row: with the
-- sort keys in the primary key, that ranking reads the index alone, and only the page's rows
-- are fetched (2,600 matches: 11 ms of heap reads become 6 ms from the index).
ALTER TABLE tickets
    DROP CONSTRAINT tickets_pkey,
    ADD CONSTRAINT tickets_pkey PRIMARY KEY (id)
        INCLUDE (last_activity_at, created_at, due_sort, priority_rank);

-- Estimates for the new expressions now, not at the next automatic ANALYZE.
ANALYZE ticket_search;
