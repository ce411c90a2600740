"""Database access: connections, the SQL catalogue, deploy and migrations."""
