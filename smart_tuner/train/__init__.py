"""Training: the loop (trainer.py) and its rooms: the run directory's life (run_dir.py), the one writer of the
controls (controls.py), deliberate faults (faults.py), the lock-step of several ranks (lockstep.py over the
collectives of distributed.py), validation measurements (validation.py), fine-tuning (finetune.py) and the progress
bar (progress.py); and the runner that wires a run together with its adapters and watchers (runner.py), so that a
production run gets exactly the hooks a study trial had."""
