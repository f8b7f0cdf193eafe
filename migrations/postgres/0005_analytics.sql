-- Projection `analytics` (CONTRACT §6.5). Times are microseconds since the Unix epoch.
-- Per ticket: its org and the instants the response and resolution figures need.
CREATE TABLE analytics_tickets (
    ticket_id         uuid    PRIMARY KEY,
    org               text,
    opened_at         bigint  NOT NULL,
    -- The first public comment by staff.
    first_response_at bigint ,
    -- The first move to resolved or closed.
    resolved_at       bigint 
);

CREATE INDEX analytics_tickets_opened ON analytics_tickets (opened_at);

-- One row per counted event: opened, resolved, closed, withdrawn, escalated, reopened.
CREATE TABLE analytics_events (
    ticket_id uuid    NOT NULL,
    version   bigint  NOT NULL,
    kind      text    NOT NULL,
    at        bigint  NOT NULL,
    PRIMARY KEY (ticket_id, version, kind)
);

CREATE INDEX analytics_events_at ON analytics_events (at);
