"""Launchers, the submitting side: the local fork, Slurm (submit, watch, report), diagnosis."""
