"""workflows layer (see ../shared/DESIGN.md)."""
