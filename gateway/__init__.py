"""The daemon: configuration, service composition, doors' shared plumbing, health and metrics."""

__all__ = ["app", "config", "home", "listeners", "metrics", "directory_service"]
