-- A read no longer moves its ticket's rows: the position of a `tickets` row is now that of its
-- ticket's last event other than a read (docs/ARCHITECTURE.md, list paging). This file cannot
-- see the log, so the `tickets` projection starts again from the start of the log and writes
-- its rows as it now does, as a rebuild would (`ticketd verify` compares them); the other
-- projections keep theirs. Paging would be right either way: a cursor needs a row's position
-- no earlier than its last change of keys.
DELETE FROM ticket_cc;
DELETE FROM ticket_fts;
DELETE FROM tickets;
UPDATE projection_checkpoints SET position_tx = 0, position_seq = 0 WHERE name = 'tickets';
