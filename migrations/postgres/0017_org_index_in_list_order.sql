-- An organization's tickets in the lists' default order (`-last_activity`, CONTRACT §6.1).
--
-- An org-wide customer's list reads what they may see in parts (`projections::tickets::
-- list_sql`): their organization's tickets, their own requests outside it, their CCs outside
-- both. With `(org, active)` the organization's part was read whole and sorted: at 1 M tickets
-- (5,000 an organization) p50 57 ms and p99 90 ms for a page of the default list, the heap row
-- of every ticket of the organization fetched to sort them (docs/PERFORMANCE.md, session 21).
-- With the sort key and id in the index, the default list walks the part in order and stops at
-- a page, as the requester's index (migration 0016) already lets their own requests do. The
-- other sorts still read the part whole. Nearly every update of a `tickets` row is a new row
-- version with an entry in each index anyway (migration 0016), so the wider entry is all it
-- costs the writes.
DROP INDEX tickets_org;
CREATE INDEX tickets_org ON tickets (org, active, last_activity_at, id);
