-- Full-text search for `q` (CONTRACT §6.1), kept by projection `tickets`: an FTS5 row per part
-- of a ticket, lowercased by the projection: one for its subject and description, one per
-- comment. The rowid says whose part it is, so a search reads nothing but the index:
--
--     rowid = number << 32 | version << 1 | private
--
-- `number` is the ticket's (CONTRACT §3), `version` that of the comment's event (0 for the
-- subject and description, which an edit replaces in place) and `private` 1 for a private
-- comment. A word of `q` may be in any part the caller may see, so each word is matched on its
-- own and the tickets intersected.
--
-- A row per part, not per ticket: FTS5 re-indexes a whole row when it changes, so a row per
-- ticket would make every comment cost as much as all the ticket's text so far.
--
-- unicode61 folds case but keeps diacritics ("resume" does not match "résumé", as on
-- PostgreSQL), and with marks (M*) as token characters, words of scripts with combining vowel
-- signs stay whole.
CREATE VIRTUAL TABLE ticket_fts USING fts5 (
    body,
    tokenize = "unicode61 remove_diacritics 0 categories 'L* N* Co M*'"
);

-- From a search's ticket numbers to the tickets.
CREATE INDEX tickets_number ON tickets (number);

-- The tickets projection now keeps more: rebuild it from the start of the log.
DELETE FROM ticket_cc;
DELETE FROM tickets;
DELETE FROM projection_checkpoints WHERE name = 'tickets';
