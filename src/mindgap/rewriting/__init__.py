"""The rewriting stage (DESIGN.md §1): self-alignment, guided re-solve and expert fallback; SDFT; the RL rewriter."""
