-- Full-text search for `q` (CONTRACT §6.1), kept by projection `tickets`: one row per ticket
-- with stripped 'simple' vectors (words, lowercased by the projection; no stemming, no
-- positions) of its subject and description (`head`), its public comments and its private
-- comments.
--
-- Each word of `q` must be in some part the caller may see (customers: not the private
-- comments). A GIN index per part turns that into index lookups: per word the union over the
-- parts, intersected over the words.
CREATE TABLE ticket_search (
    ticket_id        uuid     PRIMARY KEY,
    head             tsvector NOT NULL,
    public_comments  tsvector NOT NULL,
    private_comments tsvector NOT NULL
);

CREATE INDEX ticket_search_head ON ticket_search USING gin (head);
CREATE INDEX ticket_search_public ON ticket_search USING gin (public_comments);
CREATE INDEX ticket_search_private ON ticket_search USING gin (private_comments);

-- How many tickets the planner expects a word in decides how a search runs (from these
-- indexes, or walking the sort's index). By default ANALYZE keeps the frequencies of 1,000
-- words per column and guesses the rest as half the rarest of those: at a million tickets a
-- word in 100 looks like one in thousands, and the search walks all of them. 10,000 words each.
ALTER TABLE ticket_search
    ALTER COLUMN head SET STATISTICS 1000,
    ALTER COLUMN public_comments SET STATISTICS 1000,
    ALTER COLUMN private_comments SET STATISTICS 1000;

-- The tickets projection now keeps more: rebuild it from the start of the log.
DELETE FROM ticket_cc;
DELETE FROM tickets;
DELETE FROM projection_checkpoints WHERE name = 'tickets';
