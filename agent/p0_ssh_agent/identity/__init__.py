"""Identity: the agent's JWK key pair (keys.py) and the ES384 tokens made from it (token.py)."""
