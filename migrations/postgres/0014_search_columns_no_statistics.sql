-- `ticket_search`'s three vectors keep no statistics of their own.
--
-- No query tests a vector column by itself: the staff search tests the indexed expression,
-- whose statistics (target 1000, migration 0008) its plan rule reads, and the customer search
-- an expression with no index, which the planner estimates by a fixed selectivity whatever
-- the columns hold. So the columns' lexeme statistics were never read, yet every `ANALYZE`
-- of the table built them over the expression's sample of 300,000 rows: at 1,000,000 tickets
-- `ANALYZE ticket_search` took 5.6 - 6.0 s with them and 4.0 - 4.2 s without, at the end of
-- every rebuild, before its switch (docs/PERFORMANCE.md, session 19).
ALTER TABLE ticket_search
    ALTER COLUMN head SET STATISTICS 0,
    ALTER COLUMN public_comments SET STATISTICS 0,
    ALTER COLUMN private_comments SET STATISTICS 0;
