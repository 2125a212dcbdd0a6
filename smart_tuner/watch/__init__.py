"""Hooks that observe a run and never decide: previews, the debug reporter, Telegram alerts, MLflow tracking,
and the plots they render."""
