"""Stage 4, train: discovery warm start, Bradley-Terry with regularizers, checkpoint choice."""
