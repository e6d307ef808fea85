"""Proxying: the pooled upstream HTTP/1.1 client and the stage that streams a request through it."""
