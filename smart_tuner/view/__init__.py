"""What a person opens after a study: the self-contained HTML report, optuna-dashboard and the MLflow UI.
Nothing here imports torch."""
