"""What every rank runs: its phases, barriers, timeouts, faults and status records."""
