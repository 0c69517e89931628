"""Verification of final answers: the answer maths (``answers``: extraction, normalisation, the fast
exact path), the batched ``Verifier`` (``verifier``) and its pool of math-verify workers (``pool``)."""
