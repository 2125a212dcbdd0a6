"""Training: the trainer loop (trainer.py) and the runner that wires a run together with its adapters and
watchers (runner.py), so that a production run gets exactly the hooks a study trial had."""
