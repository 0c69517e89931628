"""Generators: engines that sample responses with their per-token log-probs (``base``: the protocol;
``factory``: the backend a config names; ``hf`` and ``vllm``: the backends)."""
