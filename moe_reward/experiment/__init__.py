"""Stage 7, experiment: the comparison protocol across model kinds, seeds and held-out users."""
