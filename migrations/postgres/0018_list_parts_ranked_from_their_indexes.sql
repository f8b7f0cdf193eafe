-- A customer's parts of a list and an organization's tickets, in any order of the lists
-- (CONTRACT §6.1), ranked from their indexes alone.
--
-- A list of an organization's tickets in an order other than the default (an org-wide
-- customer's, `sort=due` say, or an agent's `org=` filter) read the heap row of every ticket of
-- the organization to sort them: at 1 M tickets (5,000 an organization), 4 clients, p50 53 ms
-- and p99 110 ms a page (docs/PERFORMANCE.md, session 23). The requester's part of an org-wide
-- customer's list read the heap row of each of their requests to test its organization. With
-- every column such a part filters or sorts on in the index, the list ranks the part's ids by
-- an index-only scan and reads the rows of the page alone (`projections::tickets::list_sql`).
-- An update already writes a new entry in both indexes (migration 0016); the entries are
-- wider, no more.
DROP INDEX tickets_org;
CREATE INDEX tickets_org ON tickets (org, active, last_activity_at, id)
    INCLUDE (created_at, due_sort, priority_rank, status, priority, channel, position_tx,
             position_seq);
DROP INDEX tickets_requester;
CREATE INDEX tickets_requester ON tickets (requester, active, last_activity_at, id, due_sort)
    INCLUDE (org, created_at, priority_rank, status, priority, channel, position_tx,
             position_seq);
