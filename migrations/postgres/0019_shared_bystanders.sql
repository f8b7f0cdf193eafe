-- Transactions of any process on this store that never append events (a rebuild's loads and
-- index builds, in `ticketd rebuild` or beside the service), registered by their transaction
-- id while they run, so that the log readers' snapshot gate looks past them as it does past
-- its own process's projection batches. Without it a rebuild's long transactions held every
-- live projection and `min_position` wait back until they ended.
--
-- A row left behind by a process that died names a transaction that no longer runs, which the
-- gate does not meet again (ids are 64-bit, never reused): harmless, and removed by the next
-- registration. Unlogged: after a crash it starts empty, which is all it needs.
CREATE UNLOGGED TABLE log_bystanders (
    xid bigint PRIMARY KEY
);
