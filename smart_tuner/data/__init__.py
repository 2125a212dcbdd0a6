"""From a corpus directory to batches: corpus validation, symbols, audio to log-mel (cached), length-bucketed
batches, and the demo corpus synthesized with eSpeak NG."""
