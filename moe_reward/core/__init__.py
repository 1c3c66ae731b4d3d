"""Infrastructure every stage uses and that knows no domain: atomic writes, size limits, the root error type, heap hygiene."""
