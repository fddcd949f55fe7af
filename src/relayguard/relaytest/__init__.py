"""Open-relay testing: the trick catalogue (pure data) and, later, the prober."""
