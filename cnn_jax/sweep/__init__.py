"""Hyper-parameter sweeps on Optuna: `cnn-jax sweep` (docs/sweeps.md).

  space.py    what is swept: `--space KEY=loguniform(A,B)` flags or an experiment's get_sweep
  study.py    the study in its database, the samplers / pruners, and the worker loop that
              runs each parameter set to COMPLETE exactly once (a killed worker's trial is
              re-queued with the same parameters and resumes from its checkpoint)
  trial.py    one trial: an ordinary run of the trainer in W/trials/NNNN, reporting its
              per-epoch validation metric for pruning
  summary.py  the table (printed, summary.csv / summary.md) and the picture (sweep.png)
  command.py  the command line: K local workers on disjoint cores, or one SLURM array task
"""
