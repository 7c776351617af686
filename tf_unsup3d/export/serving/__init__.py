"""TF Serving configuration and the gRPC / REST client."""
