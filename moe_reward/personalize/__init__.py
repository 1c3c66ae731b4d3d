"""Stage 6, personalize: user profiles as weights over experts (adapters) and the label store they are rebuilt from."""
