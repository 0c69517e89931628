"""The rewriting stage: self-alignment, guided re-solve and expert fallback (DESIGN.md §1)."""
