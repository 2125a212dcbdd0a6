"""The study: an objective file and an Optuna study -> trials, each a full training run with the adapters on.

Lowest first, each module importing only those listed before it: ``space`` (objective files, search spaces, the
sampler and pruner names), ``storage`` (opening storages; the trials by outcome, the best trial, the budget count;
no torch), ``options`` (:class:`~smart_tuner.study.options.StudyOptions` and the command lines derived from it),
``objective`` (one trial: the Optuna objective and its reporting hook), ``workers`` (``optimize``, worker processes,
the progress bar, the study's MLflow run). This file imports none of them, so reading a study never loads torch."""
