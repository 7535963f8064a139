"""The application: Hydra's command line, sweeps, dispatch to a launcher, signals."""
