"""Process set-up: runtime flags, malloc, signals, workdir lock, failed writes."""
