"""Helpers of train.py: flags, distributed set-up, schedule, metrics, checkpoints and --benchmark."""
