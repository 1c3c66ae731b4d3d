"""Stage 5, evaluate: metrics and diagnostics of a trained model, one definition per statistic, expert
descriptions and 2-D projections."""
