"""Deployment: TF Serving SavedModel and LiteRT (TFLite) export, serving client."""
