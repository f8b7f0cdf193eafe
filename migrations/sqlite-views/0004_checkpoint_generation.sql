-- Which generation of a projection's tables its checkpoint belongs to: a rebuild's switch moves
-- it on, and a runner's batch moves the checkpoint only within the generation it started in
-- (see PostgreSQL's migration 0020).
ALTER TABLE projection_checkpoints ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
