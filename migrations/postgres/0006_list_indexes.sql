-- Lists of active tickets (an agent's queue, "my overdue requests") walk these partial
-- indexes, which hold only the active rows: a queue sorted by any key finds its page without
-- stepping over the resolved and closed majority. The list query spells `active = 1` as a
-- literal so that generic plans can use them.
CREATE INDEX tickets_active_last_activity ON tickets (last_activity_at, id) WHERE active = 1;
CREATE INDEX tickets_active_created ON tickets (created_at, id) WHERE active = 1;
CREATE INDEX tickets_active_due ON tickets (due_sort, id) WHERE active = 1;
CREATE INDEX tickets_active_priority ON tickets (priority_rank, id) WHERE active = 1;

-- "My overdue requests" (CONTRACT §6.1: view=mine&overdue=true): a customer's active tickets
-- whose due time is past, straight from the index.
CREATE INDEX tickets_requester_overdue ON tickets (requester, due_sort) WHERE active = 1;
