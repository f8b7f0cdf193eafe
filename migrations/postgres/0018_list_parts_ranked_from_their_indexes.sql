-- One owner's tickets (an organization's, a requester's, an assignee's), in any order of the
-- lists (CONTRACT §6.1), read from their own index.
--
-- A list of an organization's tickets in an order other than the default (an org-wide
-- customer's, `sort=due` say, or an agent's `org=` filter) read the heap row of every ticket of
-- the organization to sort them: at 1 M tickets (5,000 an organization), 4 clients, p50 53 ms
-- and p99 110 ms a page (docs/PERFORMANCE.md, session 23). The requester's part of an org-wide
-- customer's list read the heap row of each of their requests to test its organization. An
-- agent's `view=mine` had `(assignee)` alone, so the planner walked a sort index testing every
-- ticket for the assignee: 450 - 830 ms for an agent with few closed tickets. With every column
-- such a list filters or sorts on in the index, each walks its owner's tickets in the default
-- order and, in another, ranks their ids by an index-only scan and reads the rows of the page
-- alone (`projections::tickets::list_sql`). An update already writes a new entry in every
-- index (migration 0016); the entries are wider, no more. The assignee's index holds assigned
-- tickets only: `assignee = ?` implies it, and an unassigned ticket's updates skip it.
DROP INDEX tickets_org;
CREATE INDEX tickets_org ON tickets (org, active, last_activity_at, id)
    INCLUDE (created_at, due_sort, priority_rank, status, priority, channel, position_tx,
             position_seq);
DROP INDEX tickets_requester;
CREATE INDEX tickets_requester ON tickets (requester, active, last_activity_at, id, due_sort)
    INCLUDE (org, created_at, priority_rank, status, priority, channel, position_tx,
             position_seq);
DROP INDEX tickets_assignee;
CREATE INDEX tickets_assignee ON tickets (assignee, active, last_activity_at, id)
    INCLUDE (created_at, due_sort, priority_rank, status, priority, channel, org, position_tx,
             position_seq)
    WHERE assignee IS NOT NULL;
