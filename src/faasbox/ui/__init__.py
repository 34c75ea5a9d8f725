"""The dashboard (/ui)."""
