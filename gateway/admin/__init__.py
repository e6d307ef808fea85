"""The admin listener: health and readiness now; metrics and the admin API with later issues."""
