-- A read no longer moves its ticket's rows: the position of a `tickets` or `ticket_search` row
-- is now that of its ticket's last event other than a read, which changes no sort key, so a
-- read leaves every indexed column of `tickets` as it was and PostgreSQL updates the row HOT
-- (docs/ARCHITECTURE.md, list paging). Rows an older `ticketd` wrote at a read's position take
-- the position of the last other event before it, as the projection now writes and a rebuild
-- would (`ticketd verify` compares them). Paging would be right either way: a cursor needs a
-- row's position no earlier than its last change of keys.
UPDATE tickets t SET position_tx = p.tx, position_seq = p.seq
FROM events r, LATERAL (
    SELECT e.tx_id::text::bigint AS tx, e.seq FROM events e
    WHERE e.stream_id = r.stream_id AND e.version < r.version AND e.event_type <> 'ticket.read'
    ORDER BY e.version DESC LIMIT 1
) p
WHERE r.tx_id = t.position_tx::text::xid8 AND r.seq = t.position_seq
  AND r.event_type = 'ticket.read';

-- The same batch wrote a ticket's two rows from the same state, so its search row had its
-- `tickets` row's position, and takes it again.
UPDATE ticket_search s SET position_tx = t.position_tx, position_seq = t.position_seq
FROM tickets t
WHERE t.id = s.ticket_id
  AND (s.position_tx, s.position_seq) <> (t.position_tx, t.position_seq);
