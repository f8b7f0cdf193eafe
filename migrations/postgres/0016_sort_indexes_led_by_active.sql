-- The `tickets` sort indexes lead with `active`: four indexes where there were eight, and one
-- for a customer's requests where there were two; the organization index holds `active` too.
--
-- Nearly every event changes a ticket's `last_activity_at`, so nearly every update of a
-- `tickets` row is a new row version with an entry in each of the table's indexes: fourteen
-- of them, and that update was half of the `tickets` projection's time under load
-- (docs/PERFORMANCE.md, sessions 20 and 21). Each sort key had a full index (lists of every
-- ticket) and a partial one on active tickets (queues and overdue lists, which would otherwise
-- step over the resolved and closed majority). One index on `(active, key, id)` serves both:
-- a list of active (or of inactive) tickets is one range of it, in order; a list of both reads
-- the two ranges and merges them (`projections::tickets::list_sql`). A status filter whose
-- statuses agree on `active` says so in its query.
--
-- A customer's requests (`requester = ?`, the visibility rule's first set) and their active
-- ones in the list's default order with the overdue test in the index ("my overdue requests",
-- migration 0011) are both ranges of one index on
-- `(requester, active, last_activity_at, id, due_sort)`.
--
-- An organization's tickets, active or not, are a range of `(org, active)`: a customer's list
-- reads its organization's part whole and sorts it, and with `org` alone a list of active
-- tickets intersected it with a sort index's whole active range (300,000 entries at 1 M
-- tickets).
DROP INDEX tickets_last_activity, tickets_created, tickets_due, tickets_priority,
    tickets_active_last_activity, tickets_active_created, tickets_active_due,
    tickets_active_priority, tickets_requester, tickets_requester_active_recent, tickets_org;

CREATE INDEX tickets_last_activity ON tickets (active, last_activity_at, id);
CREATE INDEX tickets_created ON tickets (active, created_at, id);
CREATE INDEX tickets_due ON tickets (active, due_sort, id);
CREATE INDEX tickets_priority ON tickets (active, priority_rank, id);
CREATE INDEX tickets_requester ON tickets (requester, active, last_activity_at, id, due_sort);
CREATE INDEX tickets_org ON tickets (org, active);
