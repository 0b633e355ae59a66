"""agents layer (see ../shared/DESIGN.md)."""
