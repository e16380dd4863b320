"""Mechanism 3: nodes pool their storage; every block lives on R of them; loss heals."""
