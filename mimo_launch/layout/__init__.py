"""The layout in plain arithmetic: the expected groups, the plan and rank-list text (no torch)."""
