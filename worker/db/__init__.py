"""Database tables, engine and the queries the node and the auditors use."""
