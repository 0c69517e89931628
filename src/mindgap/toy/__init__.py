"""The toy world of the CPU demo: generated word problems, two solution styles, and a model pretrained here."""
