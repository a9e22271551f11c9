"""MML management: the original `VERB OBJECT KEY=VALUE` grammar over an authenticated HTTP API."""
