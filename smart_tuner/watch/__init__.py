"""Hooks that observe a run and never decide: previews, the debug reporter, Telegram alerts, MLflow tracking
(their images are drawn by :mod:`smart_tuner.tts.plots`)."""
