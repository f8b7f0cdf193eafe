-- An agent's `view=mine` (assigned to them, CONTRACT §6.1) in the lists' default order.
--
-- With `(assignee)` alone the list read every ticket assigned to the agent and sorted them: at
-- 100,000 tickets, 2,000 an agent, 8.8 ms a page from one client, ten times that at ten times
-- the tickets (docs/PERFORMANCE.md, session 23). With the sort key and id in the index the
-- default list walks the agent's tickets in order and stops at a page. (PostgreSQL: migration
-- 0018.) SQLite writes an index on an update only when one of its columns changes: with
-- `last_activity_at` in it, nearly every update does, so it holds assigned tickets only
-- (`assignee = ?` implies it): writes at 32 clients went 0.92x with every ticket in it.
DROP INDEX tickets_assignee;
CREATE INDEX tickets_assignee ON tickets (assignee, last_activity_at, id)
    WHERE assignee IS NOT NULL;
