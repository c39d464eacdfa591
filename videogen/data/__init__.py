"""Training data: the synthetic shapes world with its ground truth, and readers for a user's video clips."""
