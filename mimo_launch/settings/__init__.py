"""From Hydra's composed config to validated, frozen launch settings; the run directory."""
