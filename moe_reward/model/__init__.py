"""Stage 3, model: the sparse MoE reward model and its baselines (`moe.py`, one readable file), what its router
reads (`router_inputs.py`), and its saved directory."""
