"""mimo-launch's launcher for `hydra/launcher=submitit_slurm`: Hydra takes launcher classes
only from the `hydra_plugins` package. `mimo_launch.app.submitit_sweep` holds the logic."""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class PointsLauncher(SlurmLauncher):
    """The plugin's Slurm launcher, one point (one Slurm job) at a time, each validated first
    and recorded in mimo-launch's sweep summary (`mimo_launch.app.submitit_sweep.launch_points`)."""

    def launch(self, job_overrides, initial_job_idx: int):
        from mimo_launch.app.submitit_sweep import launch_points

        return launch_points(self, job_overrides, initial_job_idx, super().launch)
