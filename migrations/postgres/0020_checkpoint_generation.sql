-- Which generation of a projection's tables its checkpoint belongs to. A rebuild's switch
-- moves it on as it puts the rebuilt tables in place, and a runner's batch moves the checkpoint
-- only within the generation it started in. The switch leaves the checkpoint where the live
-- runner stood, so without it a runner went on trusting what its earlier batches kept in memory
-- of the replaced tables' rows, and wrote those values over the rebuilt ones (after an upgrade
-- whose `ticketd rebuild` recomputes a column, the column's old value came back).
ALTER TABLE projection_checkpoints ADD COLUMN generation bigint NOT NULL DEFAULT 0;
