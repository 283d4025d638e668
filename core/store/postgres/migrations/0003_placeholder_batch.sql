-- Placeholder on branch wt-batch only: the number of another part of issue 15's
-- migration (0002 the lead's, 0003 step-ca's token check). Drop this file when
-- merging; the real one takes its place.
SELECT 1;
