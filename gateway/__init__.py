"""The daemon: configuration, service composition, doors' shared plumbing, health and metrics."""

__all__ = ["app", "config", "directory_service", "home", "listeners", "metrics"]
