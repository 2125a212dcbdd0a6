"""The study: an objective file and an Optuna study -> trials, each a full training run with the adapters on.

Lowest first, each module importing only those listed before it: ``objective_file`` (objective files, search spaces,
the sampler and pruner names), ``storage`` (opening storages; the trials by outcome, the best trial, the budget
count), ``best`` (the best trial's config and checkpoint, for ``best``, ``train --from-study`` and ``synthesize
--from-study``), ``options`` (:class:`~smart_tuner.study.options.StudyOptions` and the command lines derived from
it), ``objective`` (one trial: the Optuna objective and its reporting hook), ``optimize`` (the ``optimize`` and
``worker`` commands: the worker processes, the progress bar, the study's MLflow run). Only the last two import torch;
this file imports none of them, so reading a study never loads torch."""
