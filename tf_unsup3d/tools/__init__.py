"""Command-line tools around the model: reference checkpoint import."""
