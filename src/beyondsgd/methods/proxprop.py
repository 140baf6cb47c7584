"""Placeholder: this method is being implemented (see the issue tracker)."""
