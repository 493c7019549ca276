"""HTTP surface: thin handlers, the route table, and middleware (auth, errors, logging)."""
