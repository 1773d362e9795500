"""Early exit at run time: exit policies and the segment controller (numpy only)."""
