"""Bridges from federated-learning frameworks to gradleak (each an optional extra)."""
