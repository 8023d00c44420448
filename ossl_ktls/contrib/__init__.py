"""Integrations with third-party servers (each imports its project on demand; none is a
dependency of the library)."""
