-- Full-text search for `q` (CONTRACT §6.1), kept by projection `tickets`: one row per ticket
-- with stripped 'simple' vectors (words, lowercased by the projection; no stemming, no
-- positions) of its subject and description (`head`), its public comments and its private
-- comments.
--
-- All of `q`'s words must appear in what the caller may see, possibly in different parts, so
-- a search matches the whole query against one vector per ticket. One GIN index serves every
-- caller: staff match `head || public_comments || private_comments`; customers match that
-- too (for the index) and `head || public_comments`, checked on the rows it finds. (A second
-- index for customers would double the index work of every comment, for searches that are
-- mostly narrowed by the customer's own few tickets anyway.) Queries must spell the
-- expression exactly as here to use the index.
CREATE TABLE ticket_search (
    ticket_id        uuid     PRIMARY KEY,
    head             tsvector NOT NULL,
    public_comments  tsvector NOT NULL,
    private_comments tsvector NOT NULL
);

CREATE INDEX ticket_search_text ON ticket_search
    USING gin ((head || public_comments || private_comments));

-- The tickets projection now keeps more: rebuild it from the start of the log.
DELETE FROM ticket_cc;
DELETE FROM tickets;
DELETE FROM projection_checkpoints WHERE name = 'tickets';
