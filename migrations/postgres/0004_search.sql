-- Text for `q` (CONTRACT §6.1), kept by projection `tickets`: per ticket one part 'ticket'
-- (subject and description) and one part per comment (its id), lowercased by the projection.
-- `private` marks private comments, which customers' searches must not match.
CREATE TABLE ticket_text (
    ticket_id uuid    NOT NULL,
    part      text    NOT NULL,
    private   bigint  NOT NULL,
    body      text    NOT NULL,
    PRIMARY KEY (ticket_id, part)
);

-- The tickets projection now keeps more: rebuild it from the start of the log.
DELETE FROM ticket_cc;
DELETE FROM tickets;
DELETE FROM projection_checkpoints WHERE name = 'tickets';
