"""Routing: the route table built from config on top of the compiled trie in ``gateway._fast.router``."""
