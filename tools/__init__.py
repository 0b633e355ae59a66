"""tools layer (see ../shared/DESIGN.md)."""
