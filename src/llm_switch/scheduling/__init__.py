"""Which models run: one lifecycle per model, a pure policy, and the scheduler that owns them."""
