"""Stage 1, data: preference pairs, their readers and validation, splits, and the controlled default dataset."""
