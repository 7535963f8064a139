"""The checks a run makes on its groups: verification, then communication health."""
