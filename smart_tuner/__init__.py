"""smart_tuner: Optuna-based hyperparameter search and online adaptation for Tacotron 2 training."""

__version__ = "0.1.0"
