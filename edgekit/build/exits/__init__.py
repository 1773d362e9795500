"""Early exit, build side: exit heads, their training, calibration, segment export."""
