"""workflows layer (see docs/ARCHITECTURE.md)."""
