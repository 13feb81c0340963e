"""Independent reference implementations used by parity tests (diffusers-based, no pack imports)."""
